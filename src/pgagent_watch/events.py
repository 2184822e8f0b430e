"""Events: one captured status change, typed and immutable."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple, NotRequired, TypedDict

EventKind = Literal["run", "step", "job", "agent_down", "overdue", "stuck", "flapping"]

RUN_STATUS_TEXT = {
    "r": "running",
    "s": "succeeded",
    "f": "failed",
    "i": "internal error",
    "d": "aborted",
}
STEP_STATUS_TEXT = {
    "r": "running",
    "s": "succeeded",
    "f": "failed",
    "i": "ignored",
    "d": "aborted",
}
JOB_STATUS_TEXT = {"created": "created", "changed": "changed", "deleted": "deleted"}
# Derived kinds: states pgAgent does not report, found by the detector
# (detect.py). Each is a condition with a ``start`` and an ``end`` event.
DERIVED_KINDS: tuple[str, ...] = ("agent_down", "overdue", "stuck", "flapping")
DERIVED_STATUS_TEXT = {
    "agent_down": {"start": "no agent alive", "end": "agent alive again"},
    "overdue": {"start": "overdue", "end": "no longer overdue"},
    "stuck": {"start": "stuck", "end": "no longer stuck"},
    "flapping": {"start": "flapping", "end": "stopped flapping"},
}
KINDS: tuple[str, ...] = ("run", "step", "job", *DERIVED_KINDS)


def status_text(kind: str, status: str | None) -> str:
    """Spell out a status letter of pgAgent's for the given event kind."""
    table = {"run": RUN_STATUS_TEXT, "step": STEP_STATUS_TEXT}.get(
        kind, DERIVED_STATUS_TEXT.get(kind, JOB_STATUS_TEXT)
    )
    if status is None:
        return ""
    return table.get(status, status)


class JobStatusUpdate(TypedDict):
    """The wire shape of ``job_status_update``, as the browser receives it."""

    sid: int
    event_id: int
    kind: str
    job_id: int | None
    job_name: str | None
    run_id: int | None
    step_id: int | None
    step_run_id: int | None
    step_name: str | None
    status: str | None
    status_text: str
    result: int | None
    timestamp: str
    duration: float | None
    # Derived kinds only: the condition's details (host, since, limit, ...).
    extra: NotRequired[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One status change pgAgent committed, read back from the event table.

    ``run_id`` is pgAgent's ``jlgid``, ``step_id`` its ``jstid`` and
    ``step_run_id`` its ``jslid``.
    """

    server_id: int
    event_id: int
    xid: int
    at: datetime
    kind: str
    job_id: int | None
    job_name: str | None
    run_id: int | None
    step_id: int | None
    step_run_id: int | None
    step_name: str | None
    status: str | None
    result: int | None
    duration: float | None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def status_text(self) -> str:
        return status_text(self.kind, self.status)

    def to_wire(self) -> JobStatusUpdate:
        """The ``job_status_update`` payload for this event.

        Derived kinds (``agent_down``, ...) also carry ``extra``, a small
        object the detector wrote; the other kinds keep theirs off the wire.
        """
        wire: JobStatusUpdate = {
            "sid": self.server_id,
            "event_id": self.event_id,
            "kind": self.kind,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "run_id": self.run_id,
            "step_id": self.step_id,
            "step_run_id": self.step_run_id,
            "step_name": self.step_name,
            "status": self.status,
            "status_text": self.status_text,
            "result": self.result,
            "timestamp": self.at.isoformat(),
            "duration": self.duration,
        }
        if self.kind in DERIVED_KINDS:
            wire["extra"] = self.extra
        return wire


class Notice(NamedTuple):
    """What a notification payload says: enough to know which row to read."""

    event_id: int
    kind: str
    job_id: int | None
    run_id: int | None
    step_run_id: int | None
    status: str


class PayloadError(ValueError):
    """A notification payload that is not one of ours."""


def _opt_int(text: str) -> int | None:
    if text == "":
        return None
    # isdigit() alone accepts '²' and other digits int() refuses.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise PayloadError(f"not an id: {text[:20]!r}")
    return int(text)


def parse_payload(payload: str) -> Notice:
    """Parse ``id,kind,job_id,run_id,step_run_id,status`` as the triggers send it.

    Raises PayloadError for anything else; never anything but that.
    """
    parts = payload.split(",")
    if len(parts) != 6:
        raise PayloadError(f"expected 6 fields, got {len(parts)}")
    event_id = _opt_int(parts[0])
    if event_id is None:
        raise PayloadError("missing event id")
    kind = parts[1]
    if kind not in KINDS:
        raise PayloadError(f"unknown kind {kind[:20]!r}")
    status = parts[5]
    if len(status) > 16:
        raise PayloadError("status too long")
    return Notice(
        event_id,
        kind,
        _opt_int(parts[2]),
        _opt_int(parts[3]),
        _opt_int(parts[4]),
        status,
    )
