"""One digest: the subject, a plain-text body and an HTML body for a group.

Repeats of one job with one status are one row with a count. Everything
that came from pgAgent (names, output) is escaped in the HTML; NUL bytes
and other control characters never reach a header or a body.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .channels import Message

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")
_VERB = {
    "failed": "failed",
    "succeeded": "succeeded",
    "aborted": "were aborted",
    "started": "started",
    "stuck": "are stuck",
    "overdue": "are overdue",
    "agent_down": "lost their agent",
    "flapping": "are flapping",
}


def clean(text: str | None) -> str:
    """Text without NUL and other control characters (newlines and tabs stay)."""
    return _CONTROL.sub("", text or "")


def one_line(text: str | None, limit: int = 80) -> str:
    text = _HEADER_UNSAFE.sub(" ", text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def output_head(output: str | None, lines: int, chars: int) -> str:
    """The first lines of a step's output, cleaned, at most ``chars`` long."""
    text = clean(output)
    head = "\n".join(text.splitlines()[:lines])
    if len(head) > chars:
        head = head[:chars] + "…"
    elif len(head) < len(text.rstrip("\n")):
        head += "\n…"
    return head


def run_link(public_url: str | None, server_id: int, job_id: Any, run_id: Any) -> str:
    """The page's fragment for one run (documented in the README)."""
    if not public_url or job_id is None:
        return ""
    base = public_url.rstrip("/")
    if run_id is None:
        return f"{base}/#/servers/{server_id}/jobs/{job_id}"
    return f"{base}/#/servers/{server_id}/jobs/{job_id}/runs/{run_id}"


@dataclass
class Row:
    """Alerts of one job with one status, grouped."""

    server_id: int
    server_name: str
    job_id: int | None
    job_name: str
    status: str
    back: bool
    count: int
    first_at: datetime
    last_at: datetime
    run_id: int | None
    duration: float | None
    step_name: str
    step_result: Any
    output: str
    link: str
    note: str = ""


def group(alerts: Sequence[dict[str, Any]], public_url: str | None) -> list[Row]:
    """One row per (server, job, status), the latest run's details shown."""
    rows: dict[tuple[int, Any, str, bool], Row] = {}
    for a in sorted(alerts, key=lambda a: (a["event_at"], a["id"])):
        detail = a.get("detail") or {}
        back = bool(detail.get("back_to_normal"))
        key = (a["server_id"], a["job_id"], a["status"], back)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(
                server_id=a["server_id"],
                server_name=a["server_name"],
                job_id=a["job_id"],
                job_name=_name(a),
                status=a["status"],
                back=back,
                count=0,
                first_at=a["event_at"],
                last_at=a["event_at"],
                run_id=None,
                duration=None,
                step_name="",
                step_result=None,
                output="",
                link="",
            )
        row.count += 1
        row.last_at = a["event_at"]
        row.run_id = a["run_id"]
        row.duration = a["duration"]
        row.step_name = clean(detail.get("step_name"))
        row.step_result = detail.get("step_result")
        row.output = clean(detail.get("output"))
        row.note = one_line(str(detail.get("reason") or ""), 200)
        row.job_name = _name(a)
        row.link = run_link(public_url, a["server_id"], a["job_id"], a["run_id"])
    return sorted(rows.values(), key=lambda r: (-r.last_at.timestamp(), r.job_name))


def _name(alert: dict[str, Any]) -> str:
    if alert["job_name"]:
        return str(alert["job_name"])
    return "every job" if alert["job_id"] is None else f"job {alert['job_id']}"


def status_label(row: Row) -> str:
    """ "failed", "stuck", or "stuck: back to normal"."""
    label = row.status.replace("_", " ")
    return f"{label}: back to normal" if row.back else label


def subject(rows: Sequence[Row]) -> str:
    """ "3 jobs failed on prod: a, b, c", one line, names cut short."""
    total = sum(r.count for r in rows)
    jobs = list(dict.fromkeys(one_line(r.job_name, 40) for r in rows))
    servers = ", ".join(dict.fromkeys(one_line(r.server_name, 40) for r in rows))
    names = ", ".join(jobs[:3]) + (", ..." if len(jobs) > 3 else "")
    statuses = {r.status for r in rows}
    if all(r.back for r in rows):
        if total == 1:
            was = status_label(rows[0]).split(":")[0]
            return f"{jobs[0]} back to normal on {servers} (was {was})"
        return f"{total} back to normal on {servers}: {names}"
    if len(statuses) == 1 and not any(r.back for r in rows):
        word = next(iter(statuses))
        verb = _VERB.get(word, word)
        if total == 1:
            return _single(rows[0], servers)
        if total == len(jobs):
            return f"{total} jobs {verb} on {servers}: {names}"
        noun = "job" if len(jobs) == 1 else "jobs"
        return f"{total} runs {verb} ({len(jobs)} {noun}) on {servers}: {names}"
    return f"{total} alerts for {len(jobs)} jobs on {servers}: {names}"


def _single(row: Row, servers: str) -> str:
    if row.status == "agent_down" and row.job_id is None:
        return f"pgAgent's agent is down on {servers}"
    status = row.status.replace("_", " ")
    what = {"agent_down": "lost its agent"}.get(row.status, status)
    if row.status in ("stuck", "overdue", "flapping"):
        what = f"is {status}"
    return f"{one_line(row.job_name, 60)} {what} on {servers}"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def text_body(rows: Sequence[Row], total: int) -> str:
    lines = [f"pgagent-watch: {total} alert{'s' if total != 1 else ''}", ""]
    for r in rows:
        times = f" x{r.count}" if r.count > 1 else ""
        lines.append(f"* {r.job_name} on {r.server_name}: {status_label(r)}{times}")
        lines.append(f"  when: {_when(r.last_at)}")
        if r.count > 1:
            lines.append(f"  first: {_when(r.first_at)}")
        if r.duration is not None:
            lines.append(f"  duration: {_duration(r.duration)}")
        if r.step_name:
            result = f" (result {r.step_result})" if r.step_result is not None else ""
            lines.append(f"  failing step: {r.step_name}{result}")
        if r.note:
            lines.append(f"  why: {r.note}")
        if r.output:
            lines.append("  output:")
            lines.extend("    " + line for line in r.output.splitlines())
        if r.link:
            lines.append(f"  run: {r.link}")
        lines.append("")
    return "\n".join(lines)


_STYLE_CELL = "border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left"


def html_body(rows: Sequence[Row], total: int) -> str:
    e = html.escape
    head = "".join(
        f'<th style="{_STYLE_CELL}">{h}</th>'
        for h in (
            "job",
            "server",
            "when",
            "status",
            "duration",
            "failing step",
            "output",
        )
    )
    body = []
    for r in rows:
        name = e(r.job_name)
        if r.link:
            name = f'<a href="{e(r.link, quote=True)}">{name}</a>'
        status = e(status_label(r))
        if r.count > 1:
            status += f" &times;{r.count}"
        step = e(r.step_name or r.note)
        if r.step_name and r.step_result is not None:
            step += f" (result {e(str(r.step_result))})"
        output = (
            f'<pre style="margin:0;white-space:pre-wrap" dir="auto">{e(r.output)}</pre>'
            if r.output
            else ""
        )
        cells = (
            name,
            e(r.server_name),
            e(_when(r.last_at)),
            status,
            e(_duration(r.duration)),
            step,
            output,
        )
        body.append(
            "<tr>"
            + "".join(f'<td style="{_STYLE_CELL}" dir="auto">{c}</td>' for c in cells)
            + "</tr>"
        )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
        f"<p>pgagent-watch: {total} alert{'s' if total != 1 else ''}</p>"
        f'<table style="border-collapse:collapse"><tr>{head}</tr>'
        + "".join(body)
        + "</table></body></html>"
    )


def build(
    alerts: Sequence[dict[str, Any]], public_url: str | None, domain: str
) -> Message:
    """The digest of these alerts, with a fresh Message-ID."""
    rows = group(alerts, public_url)
    total = len(alerts)
    ids = ",".join(str(a["id"]) for a in sorted(alerts, key=lambda a: a["id"]))
    return Message(
        subject=subject(rows),
        text=text_body(rows, total),
        html=html_body(rows, total),
        message_id=f"<{secrets.token_hex(12)}@{domain}>",
        headers={"X-PgAgent-Watch-Count": str(total), "X-PgAgent-Watch-Alerts": ids},
    )
