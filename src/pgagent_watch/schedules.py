"""pgAgent's schedules in words, and when they fire, as pgAgent computes it.

A ``pga_schedule`` row holds five boolean arrays: minutes (60), hours (24),
weekdays (7, Sunday first), month days (32, the last one meaning "the last
day of the month") and months (12). An array with no true element means
"any". All five must match, and no ``pga_exception`` of the schedule (a
date, a time, or both) may match. Times are wall-clock times in the
server's ``TimeZone`` (pgAgent builds them as text and casts them there).

``describe`` says it in words, as the page shows it; ``next_run`` finds the
next minute that fires, following the rules of ``pgagent.pga_next_schedule``
(the tests compare the two on the real function). The page shows the next
run that pgAgent's own function computes, because that is when pgAgent runs
the job, and pgAgent 4.2's function departs from its own rules in two ways
that ``next_run`` does not copy: when the search rolls over into a later
hour or day, it starts at the current minute of the clock, so earlier
minutes of that hour are skipped (minutes :03 and :47 of 04:00, asked at
10:14, give 04:47); and for a month day that a month lacks (the 30th in
February) it raises instead of moving on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from datetime import tzinfo as TzInfo

WEEKDAYS = (
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


@dataclass(frozen=True)
class Exception_:
    """One ``pga_exception``: a date, a time, or both, when the schedule is skipped."""

    on_date: date | None
    at_time: time | None


@dataclass(frozen=True)
class Schedule:
    """The boolean arrays of one ``pga_schedule`` row (in pgAgent's order)."""

    minutes: Sequence[bool]
    hours: Sequence[bool]
    weekdays: Sequence[bool]
    monthdays: Sequence[bool]
    months: Sequence[bool]
    start: datetime | None = None
    end: datetime | None = None
    exceptions: Sequence[Exception_] = field(default_factory=tuple)

    @classmethod
    def from_row(
        cls, row: dict[str, object], exceptions: Sequence[Exception_] = ()
    ) -> Schedule:
        """From a row with pgAgent's column names (``jscminutes`` ...)."""

        def arr(name: str, size: int) -> list[bool]:
            value = row.get(name) or []
            assert isinstance(value, list)
            return [bool(v) for v in value][:size] + [False] * (size - len(value))

        start = row.get("jscstart")
        end = row.get("jscend")
        return cls(
            minutes=arr("jscminutes", 60),
            hours=arr("jschours", 24),
            weekdays=arr("jscweekdays", 7),
            monthdays=arr("jscmonthdays", 32),
            months=arr("jscmonths", 12),
            start=start if isinstance(start, datetime) else None,
            end=end if isinstance(end, datetime) else None,
            exceptions=tuple(exceptions),
        )


def _chosen(flags: Sequence[bool]) -> list[int]:
    """Indexes set; an empty list means "any" (pgAgent's wildcard)."""
    picked = [i for i, v in enumerate(flags) if v]
    return [] if len(picked) == len(flags) else picked


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _runs(values: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers: [1,2,3,5] -> [(1,3),(5,5)]."""
    out: list[tuple[int, int]] = []
    for v in values:
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def _step(values: Sequence[int], size: int) -> int | None:
    """The step when values are 0, k, 2k, ... up to size (k divides size)."""
    if len(values) < 2 or values[0] != 0:
        return None
    k = values[1] - values[0]
    if size % k == 0 and list(values) == list(range(0, size, k)):
        return k
    return None


def _named_ranges(values: Sequence[int], names: Sequence[str]) -> str:
    parts = []
    for a, b in _runs(values):
        if b - a >= 2:
            parts.append(f"{names[a]} to {names[b]}")
        elif b == a + 1:
            parts.extend([names[a], names[b]])
        else:
            parts.append(names[a])
    return _join(parts)


def _weekdays(days: Sequence[int]) -> str:
    # Said Monday first, as people read a week.
    monday_first = sorted((d - 1) % 7 for d in days)
    names = WEEKDAYS[1:] + WEEKDAYS[:1]
    if monday_first == [0, 1, 2, 3, 4]:
        return "Monday to Friday"
    if monday_first == [5, 6]:
        return "on weekends"
    return _named_ranges(monday_first, names)


def _ordinal(n: int) -> str:
    suffix = (
        "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    )
    return f"{n}{suffix}"


def _time_of_day(schedule: Schedule) -> str:
    minutes = _chosen(schedule.minutes)
    hours = _chosen(schedule.hours)
    if not minutes and not hours:
        return "every minute"
    if not hours:
        step = _step(minutes, 60)
        if step is not None:
            return "every minute" if step == 1 else f"every {step} minutes"
        if minutes == [0]:
            return "every hour"
        return "every hour at " + _join([f":{m:02d}" for m in minutes])
    if not minutes:
        spans = [f"{a:02d}:00 to {b:02d}:59" for a, b in _runs(hours)]
        return "every minute from " + _join(spans)
    if len(hours) * len(minutes) <= 6:
        return "at " + _join([f"{h:02d}:{m:02d}" for h in hours for m in minutes])
    step = _step(minutes, 60)
    when = (
        ("every minute" if step == 1 else f"every {step} minutes")
        if step is not None
        else "at minute " + _join([f":{m:02d}" for m in minutes])
    )
    return f"{when} of hours " + _join([f"{h:02d}" for h in hours])


def describe(schedule: Schedule, zone: str | None = None) -> str:
    """The schedule in words: "every day at 02:00, Monday to Friday (UTC)".

    ``zone`` is the server's TimeZone, in which pgAgent reads the times.
    """
    parts = [_time_of_day(schedule)]
    weekdays = _chosen(schedule.weekdays)
    monthdays = _chosen(schedule.monthdays)
    months = _chosen(schedule.months)
    if not monthdays and parts[0].startswith("at "):
        parts[0] = "every day " + parts[0]
    if monthdays:
        days = [_ordinal(d + 1) for d in monthdays if d < 31]
        if 31 in monthdays:
            days.append("last")
        parts.append("on the " + _join(days) + " day of the month")
    if weekdays:
        parts.append(("only " if monthdays else "") + _weekdays(weekdays))
    if months:
        parts.append("in " + _named_ranges(months, MONTHS))
    text = ", ".join(parts)
    if zone:
        text += f" ({zone})"
    if schedule.exceptions:
        text += f"; {len(schedule.exceptions)} exception" + (
            "s" if len(schedule.exceptions) > 1 else ""
        )
    return text


def _last_day(d: date) -> bool:
    return (d + timedelta(days=1)).month != d.month


def _day_matches(schedule: Schedule, d: date) -> bool:
    months = schedule.months
    if any(months) and not months[d.month - 1]:
        return False
    monthdays = schedule.monthdays
    if any(monthdays):
        # pgAgent honours "last day" only when it is the only day chosen.
        only_last = monthdays[31] and not any(monthdays[:31])
        if not (monthdays[d.day - 1] or (only_last and _last_day(d))):
            return False
    weekdays = schedule.weekdays
    sunday_first = (d.weekday() + 1) % 7
    return not any(weekdays) or weekdays[sunday_first]


def _excepted(schedule: Schedule, at: datetime) -> bool:
    wall = at.replace(tzinfo=None)
    for e in schedule.exceptions:
        if e.on_date is not None and e.on_date != wall.date():
            continue
        if e.at_time is not None and e.at_time != wall.time():
            continue
        if e.on_date is None and e.at_time is None:
            continue
        return True
    return False


def next_run(
    schedule: Schedule, after: datetime, zone: TzInfo, days: int = 800
) -> datetime | None:
    """The first minute strictly after ``after`` at which the schedule fires.

    Wall-clock times are read in ``zone`` (the server's TimeZone). None when
    the schedule has ended or nothing fires within ``days``. Like pgAgent,
    the search starts at the later of the start and the next whole minute.
    """
    local = after.astimezone(zone)
    begin = local.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if schedule.start is not None:
        start = schedule.start.astimezone(zone).replace(second=0, microsecond=0)
        begin = max(begin, start)
    if schedule.end is not None and schedule.end < after:
        return None
    hours = _chosen(schedule.hours) or list(range(24))
    minutes = _chosen(schedule.minutes) or list(range(60))
    day = begin.date()
    for _ in range(days):
        if _day_matches(schedule, day):
            for h in hours:
                for m in minutes:
                    wall = datetime.combine(day, time(h, m))
                    at = wall.replace(tzinfo=zone)
                    if at < begin or _excepted(schedule, at):
                        continue
                    if schedule.end is not None and at > schedule.end:
                        return None
                    return at
        day += timedelta(days=1)
    return None
