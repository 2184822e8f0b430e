"""Schedules in words, and their next run against pgAgent's own function (C5)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, time
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pgagent_watch import samples
from pgagent_watch.schedules import Exception_, Schedule, describe, next_run


def flags(size: int, chosen: list[int] | range = ()) -> list[bool]:
    return [i in chosen for i in range(size)]


def sched(
    minutes: list[int] | range = (),
    hours: list[int] | range = (),
    weekdays: list[int] | range = (),
    monthdays: list[int] | range = (),
    months: list[int] | range = (),
    exceptions: tuple[Exception_, ...] = (),
) -> Schedule:
    return Schedule(
        flags(60, minutes),
        flags(24, hours),
        flags(7, weekdays),
        flags(32, monthdays),
        flags(12, months),
        exceptions=exceptions,
    )


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        (sched(), "every minute"),
        (sched(minutes=range(60)), "every minute"),
        (sched(minutes=range(0, 60, 5)), "every 5 minutes"),
        (sched(minutes=[0]), "every hour"),
        (sched(minutes=[15, 45]), "every hour at :15 and :45"),
        (
            sched(minutes=[0], hours=[2], weekdays=[1, 2, 3, 4, 5]),
            "every day at 02:00, Monday to Friday",
        ),
        (sched(minutes=[54], hours=[7]), "every day at 07:54"),
        (
            sched(minutes=[0, 30], hours=[9, 17]),
            "every day at 09:00, 09:30, 17:00 and 17:30",
        ),
        (
            sched(minutes=[0], hours=[3], weekdays=[0, 6]),
            "every day at 03:00, on weekends",
        ),
        (
            sched(minutes=[0], hours=[1], monthdays=[0, 14, 31]),
            "at 01:00, on the 1st, 15th and last day of the month",
        ),
        (
            sched(minutes=[10], hours=[4], months=[0, 6]),
            "every day at 04:10, in January and July",
        ),
        (sched(hours=[22, 23]), "every minute from 22:00 to 23:59"),
        (
            sched(weekdays=[1, 3, 5], minutes=[0], hours=[6]),
            "every day at 06:00, Monday, Wednesday and Friday",
        ),
    ],
)
def test_a_schedule_reads_as_words(schedule: Schedule, words: str) -> None:
    assert describe(schedule) == words


def test_the_words_name_the_server_zone_and_exceptions() -> None:
    s = sched(
        minutes=[54], hours=[7], exceptions=(Exception_(date(2026, 12, 25), None),)
    )
    assert describe(s, "UTC") == "every day at 07:54 (UTC); 1 exception"


CASES = [
    sched(minutes=[54], hours=[7]),
    sched(minutes=[0], hours=[2], weekdays=[1, 2, 3, 4, 5]),
    sched(minutes=range(0, 60, 7)),
    sched(minutes=[30], hours=[1], monthdays=[31]),
    sched(minutes=[5], hours=[23], monthdays=[0, 14], months=[2, 10]),
    sched(minutes=[0], hours=[12], weekdays=[0]),
    sched(minutes=[0], hours=[2], months=[2]),  # 02:00 in March: across DST
]


@pytest.mark.parametrize("zone", ["UTC", "America/Chicago"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_next_run_matches_pgagents_own_function(
    db: psycopg.Connection, make_job: Callable[..., int], zone: str, case: int
) -> None:
    schedule = CASES[case]
    job_id = make_job([samples.Step("1 x", "SELECT 1")], enabled=False)
    # Rolled back: pgAgent's exceptions are unique by (date, time) cluster-wide.
    with db.transaction(force_rollback=True):
        db.execute("SELECT set_config('TimeZone', %s, true)", (zone,))
        row = db.execute(
            "INSERT INTO pgagent.pga_schedule (jscjobid, jscname, jscminutes,"
            " jschours, jscweekdays, jscmonthdays, jscmonths)"
            " VALUES (%s, 'c5', %s, %s, %s, %s, %s) RETURNING jscid",
            (
                job_id,
                list(schedule.minutes),
                list(schedule.hours),
                list(schedule.weekdays),
                list(schedule.monthdays),
                list(schedule.months),
            ),
        ).fetchone()
        assert row is not None
        if case == 0:
            # An exception on the time itself moves the run to the next day.
            db.execute(
                "INSERT INTO pgagent.pga_exception (jexscid, jexdate, jextime)"
                " VALUES (%s, (now() + interval '1 day')::date, '07:54')",
                (row[0],),
            )
        got = db.execute(
            "SELECT now(), jscstart, pgagent.pga_next_schedule(jscid, jscstart,"
            " jscend, jscminutes, jschours, jscweekdays, jscmonthdays, jscmonths)"
            " FROM pgagent.pga_schedule WHERE jscid = %s",
            (row[0],),
        ).fetchone()
        exceptions = db.execute(
            "SELECT jexdate, jextime FROM pgagent.pga_exception WHERE jexscid = %s",
            (row[0],),
        ).fetchall()
    assert got is not None
    now, start, expected = got
    ours = Schedule(
        schedule.minutes,
        schedule.hours,
        schedule.weekdays,
        schedule.monthdays,
        schedule.months,
        start=start,
        exceptions=tuple(Exception_(d, t) for d, t in exceptions),
    )
    assert next_run(ours, now, ZoneInfo(zone)) == expected


def test_next_run_keeps_wall_time_across_a_daylight_saving_change() -> None:
    # C5: 07:54 in Chicago is 13:54 UTC in winter and 12:54 UTC in summer.
    from datetime import datetime

    zone = ZoneInfo("America/Chicago")
    s = sched(minutes=[54], hours=[7])
    before = next_run(s, datetime(2026, 3, 6, 12, 0, tzinfo=zone), zone)
    after = next_run(s, datetime(2026, 3, 8, 0, 0, tzinfo=zone), zone)
    assert before is not None and after is not None
    assert before.utcoffset() != after.utcoffset()
    assert before.time() == after.time() == time(7, 54)
