"""Reading the event table exactly once, although events commit out of order.

An event's id comes from a sequence at insert, not at commit: with several
pgAgent jobs running at once, event 41 can commit after event 42, so "every
event above the last id" loses 41. Each event also records the id of the
transaction that wrote it. Every transaction with an id below the xmin of a
snapshot has ended, so all its events are visible; an event not yet visible
belongs to a transaction at or above that xmin. The cursor therefore keeps:

- ``mark``: an xmin taken no later than its last full read; every event with
  a lower transaction id has been handled;
- ``seen``: the ids (and transaction ids) of events handled at or above the
  mark, so that reading "xid >= mark" again delivers none twice.

The live path reads new ids and the ids that notifications named, and is
never held back by a long open transaction; the full read (at connect and
on the safety timer) is what moves the mark.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .errors import ReplayMarkError
from .events import JobEvent

# Names come from pgAgent's tables at read time, so a renamed job shows its
# new name and the trigger stays small. Durations are only final once the
# status is no longer 'r'.
_SELECT = """
SELECT e.id, e.xid::text::bigint, e.at, e.kind,
       coalesce(e.job_id, jl.jlgjobid, st.jstjobid),
       coalesce(j.jobname, e.extra->>'name'),
       e.jlgid, e.jstid, e.jslid, st.jstname, e.status,
       CASE WHEN e.status <> 'r' THEN sl.jslresult END,
       CASE WHEN e.status = 'r' THEN NULL
            WHEN e.kind = 'run' THEN extract(epoch FROM jl.jlgduration)::float8
            WHEN e.kind = 'step' THEN extract(epoch FROM sl.jslduration)::float8
       END,
       e.extra
FROM pgagent_watch.event e
LEFT JOIN pgagent.pga_joblog jl ON jl.jlgid = e.jlgid
LEFT JOIN pgagent.pga_jobsteplog sl ON sl.jslid = e.jslid
LEFT JOIN pgagent.pga_jobstep st ON st.jstid = e.jstid
LEFT JOIN pgagent.pga_job j ON j.jobid = coalesce(e.job_id, jl.jlgjobid, st.jstjobid)
"""
_LIVE = _SELECT + " WHERE e.id > %s OR e.id = ANY(%s) ORDER BY e.id"
_FULL = _SELECT + " WHERE e.xid >= %s::text::xid8 ORDER BY e.id"
_XMIN = "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint"
_XMIN += " FROM pg_current_snapshot() AS s"
_MAX_ID = "SELECT coalesce(max(id), 0) FROM pgagent_watch.event"

AnyConn = psycopg.AsyncConnection[Any]


def row_to_event(server_id: int, row: Sequence[Any]) -> JobEvent:
    """Build a JobEvent from one row of the read queries above."""
    return JobEvent(
        server_id=server_id,
        event_id=row[0],
        xid=row[1],
        at=row[2],
        kind=row[3],
        job_id=row[4],
        job_name=row[5],
        run_id=row[6],
        step_id=row[7],
        step_run_id=row[8],
        step_name=row[9],
        status=row[10],
        result=row[11],
        duration=row[12],
        extra=row[13] or {},
    )


@dataclass
class CursorState:
    """What a cursor must remember to resume exactly where it stopped."""

    mark: int
    max_id: int
    seen: dict[int, int] = field(default_factory=dict)


class EventCursor:
    """Exactly-once reader of one server's event table."""

    def __init__(self, server_id: int, state: CursorState | None = None) -> None:
        self.server_id = server_id
        self.state = state

    @property
    def started(self) -> bool:
        return self.state is not None

    async def start_from_now(self, conn: AnyConn) -> None:
        """Begin at the present: events already committed are not delivered."""
        xmin, _ = await self._snapshot(conn)
        cur = await conn.execute(
            "SELECT id, xid::text::bigint FROM pgagent_watch.event"
            " WHERE xid >= %s::text::xid8",
            (xmin,),
        )
        seen = {int(r[0]): int(r[1]) for r in await cur.fetchall()}
        row = await (await conn.execute(_MAX_ID)).fetchone()
        self.state = CursorState(mark=xmin, max_id=int(row[0]) if row else 0, seen=seen)

    async def check_mark(self, conn: AnyConn) -> None:
        """Raise ReplayMarkError if the mark lies beyond the server's counter."""
        assert self.state is not None
        _, xmax = await self._snapshot(conn)
        if self.state.mark > xmax:
            raise ReplayMarkError(
                f"the replay mark (transaction {self.state.mark}) is ahead of the "
                f"server's transaction counter ({xmax}); was the database restored "
                "from a dump into a new cluster? run 'pgagent-watch reset-mark' "
                "to replay from now"
            )

    async def read_live(self, conn: AnyConn, notified: Iterable[int]) -> list[JobEvent]:
        """Read events above the highest id seen and those a notification named."""
        assert self.state is not None
        st = self.state
        late = [i for i in notified if i <= st.max_id and i not in st.seen]
        cur = await conn.execute(_LIVE, (st.max_id, late))
        return self._take(await cur.fetchall())

    async def read_full(self, conn: AnyConn) -> list[JobEvent]:
        """Read every event at or above the mark not handled yet; move the mark."""
        assert self.state is not None
        xmin, _ = await self._snapshot(conn)
        cur = await conn.execute(_FULL, (self.state.mark,))
        events = self._take(await cur.fetchall())
        self.advance(xmin)
        return events

    def advance(self, xmin: int) -> None:
        """Move the mark to xmin and forget seen ids below it."""
        assert self.state is not None
        st = self.state
        if xmin > st.mark:
            st.mark = xmin
            st.seen = {i: x for i, x in st.seen.items() if x >= xmin}

    def _take(self, rows: Sequence[Sequence[Any]]) -> list[JobEvent]:
        assert self.state is not None
        st = self.state
        out = []
        for row in rows:
            event_id = int(row[0])
            if event_id in st.seen or (row[1] < st.mark):
                continue
            st.seen[event_id] = int(row[1])
            if event_id > st.max_id:
                st.max_id = event_id
            out.append(row_to_event(self.server_id, row))
        return out

    @staticmethod
    async def _snapshot(conn: AnyConn) -> tuple[int, int]:
        row = await (await conn.execute(_XMIN)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
