"""Step output that tries to break a mail: NUL bytes, 1 MB, HTML, right-to-left,
CJK and 4-byte symbols (C7, C9), written by the real pgAgent daemon."""

from __future__ import annotations

import pytest

from pgagent_watch import samples
from pgagent_watch.samples import Step

from .alerts_support import (
    alert_settings,
    alerts_ready,
    html_of,
    make_user,
    subscribe,
    text_of,
)
from .fix_cluster import running_service, until

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("forget_users")]

RTL = "שלום עולם مرحبا بالعالم"
CJK = "漢字テキスト 한국어 😀𝄞"
SCRIPT = f"""printf 'before\\0after\\n'
echo '<b>bold</b> "q" & <script>alert(1)</script>'
echo '{RTL}'
echo '{CJK}'
yes '{CJK}' | head -n 26000
exit 3
"""


async def test_hostile_output_is_mailed_escaped_and_cut_short(
    cluster, db, make_job, live_agent, inbox
):
    name = f"ünïcode-{RTL[:4]}-<i>"
    job_id = make_job([Step("1 noisy", SCRIPT, kind="b")], name=name)
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        samples.run_now(db, job_id)
        await until(lambda: inbox.to(address), "the digest", limit=60)
    row = db.execute(
        "SELECT jl.jlgstatus, length(sl.jsloutput), octet_length(sl.jsloutput)"
        " FROM pgagent.pga_joblog jl JOIN pgagent.pga_jobsteplog sl"
        " ON sl.jsljlgid = jl.jlgid WHERE jl.jlgjobid = %s",
        (job_id,),
    ).fetchone()
    # pgAgent's own write went through (the trigger never rolled it back).
    assert row[0] == "f"
    mail = inbox.to(address)[0]
    assert mail["Subject"] == f"{name} failed on test"
    text, html = text_of(mail), html_of(mail)
    assert "\x00" not in text and "\x00" not in html
    assert f"    {RTL}" in text and f"    {CJK}" in text
    # pgAgent itself drops a NUL byte and what follows it in its read.
    assert '    before<b>bold</b> "q" & <script>alert(1)</script>' in text
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "<i>" not in html and "&lt;i&gt;" in html
    assert RTL in html and CJK in html
    assert "failing step: 1 noisy (result 3)" in text
    # The first lines only: never the megabyte.
    assert len(text) < 10_000 and len(html) < 20_000


async def test_output_cut_inside_a_character_still_alerts_naming_the_step(
    cluster, db, make_job, live_agent, inbox
):
    # 4-byte symbols cut at a byte count: pgAgent's UPDATE of the step run
    # fails ("invalid byte sequence"), the step stays 'r', the run ends 'f'.
    script = "yes '😀😀😀' | head -c 100001; exit 1"
    job_id = make_job([Step("1 cut", script, kind="b")])
    async with running_service(alert_settings(cluster, inbox.port)) as running:
        await alerts_ready(running)
        user_id, address, _ = make_user(db)
        subscribe(db, user_id, job_id)
        samples.run_now(db, job_id)
        await until(lambda: inbox.to(address), "the digest", limit=60)
    text = text_of(inbox.to(address)[0])
    assert "failing step: 1 cut" in text
    assert "did not record the end of this step" in text
