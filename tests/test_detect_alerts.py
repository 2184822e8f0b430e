"""From the real daemon's death to a mail: health conditions are alerted."""

from __future__ import annotations

import psycopg
import pytest

from pgagent_watch import samples
from pgagent_watch.cluster import Agent, Cluster
from pgagent_watch.samples import Step

from .alerts_support import Inbox, alerts_ready, make_user, subscribe, text_of
from .fix_cluster import running_service, settings_for, until
from .test_detect import FAST, agent_host, wait_agent_registered

pytestmark = pytest.mark.slow


async def test_a_killed_agent_mails_the_stuck_run_and_then_the_all_clear(
    cluster: Cluster,
    db: psycopg.Connection,
    make_job,
    live_agent: Agent,
    inbox: Inbox,
):
    job_id = make_job([Step("long", "sleep 60", kind="b")])
    await wait_agent_registered(db)
    pid, host = agent_host(db)
    settings = settings_for(
        cluster,
        detect=FAST,
        smtp={"host": "127.0.0.1", "port": inbox.port, "security": "plain"},
        alerts={"window": 1, "settle": 0.3, "poll_interval": 0.5},
    )
    user_id: int | None = None
    try:
        async with running_service(settings) as running:
            await alerts_ready(running)
            user_id, address, _ = make_user(db)
            subscribe(db, user_id, job_id, statuses=["stuck"])
            subscribe(db, user_id, None, statuses=["agent_down"])
            samples.run_now(db, job_id)
            await until(
                lambda: db.execute(
                    "SELECT 1 FROM pgagent.pga_jobsteplog s JOIN pgagent.pga_joblog l"
                    " ON l.jlgid = s.jsljlgid WHERE l.jlgjobid = %s"
                    " AND s.jslstatus = 'r'",
                    (job_id,),
                ).fetchone(),
                "the long step to start",
            )
            live_agent.kill()
            try:

                def mailed() -> str:
                    return "\n".join(text_of(m) for m in inbox.to(address))

                await until(
                    lambda: (
                        f"its agent (pid {pid}) is gone" in mailed()
                        and f"the last was pid {pid} on {host}" in mailed()
                    ),
                    "the stuck and agent down alerts",
                )
            finally:
                live_agent.start()
            await until(
                lambda: (
                    "back to normal"
                    in " ".join(str(m["Subject"]) for m in inbox.to(address))
                ),
                "the all clear",
            )
    finally:
        if user_id is not None:
            # Anonymous access for the next tests: no user left behind.
            db.execute("DELETE FROM pgagent_watch.app_user WHERE id = %s", (user_id,))
