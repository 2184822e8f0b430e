"""Fuzzing the parsers a notification or a client can reach (fault 7)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pgagent_watch.events import KINDS, Notice, PayloadError, parse_payload
from pgagent_watch.push import MAX_ID, BadRequest, server_id_of

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=200))
def test_parse_payload_returns_a_notice_or_raises_payload_error(text):
    try:
        notice = parse_payload(text)
    except PayloadError:
        return
    assert isinstance(notice, Notice)
    assert notice.event_id >= 0 and notice.kind in KINDS


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["", "1", "42", "run", "step", "job", "s"]),
            st.text(max_size=6),
        ),
        min_size=6,
        max_size=6,
    )
)
def test_parse_payload_near_misses_never_raise_anything_else(parts):
    try:
        parse_payload(",".join(parts))
    except PayloadError:
        pass


@given(st.integers(min_value=0, max_value=10**18), st.sampled_from(sorted(KINDS)))
def test_parse_payload_reads_what_the_triggers_write(event_id, kind):
    notice = parse_payload(f"{event_id},{kind},7,8,,s")
    assert (notice.event_id, notice.kind, notice.job_id, notice.step_run_id) == (
        event_id,
        kind,
        7,
        None,
    )


@settings(max_examples=2000, deadline=None)
@given(json_values | st.dictionaries(st.just("sid"), json_values, max_size=1))
def test_server_id_of_returns_an_id_in_range_or_raises_bad_request(data):
    try:
        value = server_id_of(data)
    except BadRequest as exc:
        assert exc.code in {"BAD_REQUEST", "NO_SERVER_ID"}
        return
    assert type(value) is int and 1 <= value <= MAX_ID


def test_undecodable_frames_log_one_short_line_a_second() -> None:
    import logging
    import sys

    from pgagent_watch.push import BAD_FRAMES

    def record() -> logging.LogRecord:
        try:
            raise ValueError("bad frame")
        except ValueError:
            info = sys.exc_info()
        return logging.LogRecord(
            "engineio.server",
            logging.ERROR,
            __file__,
            1,
            "message async handler error",
            (),
            info,
        )

    BAD_FRAMES._last = 0.0
    first, second = record(), record()
    assert BAD_FRAMES.filter(first) is True
    assert first.exc_info is None and "traceback" not in first.getMessage()
    assert BAD_FRAMES.filter(second) is False
