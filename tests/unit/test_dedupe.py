"""Repeats of an ``event_id`` within the dedupe window count once (CONTRACT 3.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.core.dedupe import (
    KEPT_WINDOWS,
    FirstSeen,
    Segment,
    can_judge,
    decode_first_seen,
    encode_first_seen,
    is_expired,
    is_repeat,
    segment_for,
)

HOUR_MS = 3_600_000
WINDOW_MS = 24 * HOUR_MS  # the default window
FIRST_AT_MS = 1_732_438_800_000  # 2024-11-24T09:00:00Z
FIRST = FirstSeen(at_ms=FIRST_AT_MS, position=100)


@pytest.mark.parametrize(
    "description, first, position, now_ms, expected",
    [
        ("never seen before", None, 100, FIRST_AT_MS, False),
        ("delivered again a second later", FIRST, 101, FIRST_AT_MS + 1_000, True),
        ("delivered again at the same instant", FIRST, 101, FIRST_AT_MS, True),
        ("delivered again 23h59m later", FIRST, 5_000, FIRST_AT_MS + WINDOW_MS - 60_000, True),
        ("delivered again 1 ms before the window ends", FIRST, 5_000, FIRST_AT_MS + WINDOW_MS - 1, True),
        ("delivered again exactly one window later", FIRST, 5_000, FIRST_AT_MS + WINDOW_MS, False),
        ("delivered again after the window", FIRST, 5_000, FIRST_AT_MS + WINDOW_MS + 1, False),
        ("delivered again two days later", FIRST, 5_000, FIRST_AT_MS + 2 * WINDOW_MS, False),
        ("delivered again from an earlier position", FIRST, 7, FIRST_AT_MS + HOUR_MS, True),
        ("the same delivery replayed after a crash", FIRST, 100, FIRST_AT_MS + HOUR_MS, False),
        ("the same delivery replayed at once", FIRST, 100, FIRST_AT_MS, False),
    ],
)
def test_is_repeat(description: str, first: FirstSeen | None, position: int, now_ms: int, expected: bool) -> None:
    assert is_repeat(first, position, now_ms, WINDOW_MS) is expected, description


@pytest.mark.parametrize(
    "window_ms, now_ms, expected",
    [
        (90 * 60_000, FIRST_AT_MS + 89 * 60_000, True),  # "90m": 89 minutes later is a repeat
        (90 * 60_000, FIRST_AT_MS + 91 * 60_000, False),
        (7 * WINDOW_MS, FIRST_AT_MS + 3 * WINDOW_MS, True),  # a week-long window
    ],
)
def test_the_window_is_the_configured_one(window_ms: int, now_ms: int, expected: bool) -> None:
    assert is_repeat(FIRST, 200, now_ms, window_ms) is expected


@pytest.mark.parametrize(
    "first",
    [
        FirstSeen(at_ms=0, position=0),
        FirstSeen(at_ms=FIRST_AT_MS, position=100),
        FirstSeen(at_ms=FIRST_AT_MS, position=2**62),
        FirstSeen(at_ms=-5, position=-1),
    ],
)
def test_first_seen_survives_encoding(first: FirstSeen) -> None:
    raw = encode_first_seen(first)

    assert isinstance(raw, bytes)
    assert decode_first_seen(raw) == first


@pytest.mark.parametrize("raw", [None, b""])
def test_nothing_stored_decodes_to_never_seen(raw: bytes | None) -> None:
    assert decode_first_seen(raw) is None


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(min_value=-1, max_value=2**63 - 1))
def test_any_first_seen_round_trips(at_ms: int, position: int) -> None:
    first = FirstSeen(at_ms=at_ms, position=position)

    assert decode_first_seen(encode_first_seen(first)) == first


@given(
    first_position=st.integers(min_value=0, max_value=2**40),
    position=st.integers(min_value=0, max_value=2**40),
    elapsed_ms=st.integers(min_value=0, max_value=10 * WINDOW_MS),
    window_ms=st.integers(min_value=1, max_value=10 * WINDOW_MS),
)
def test_a_repeat_is_another_delivery_inside_the_window(
    first_position: int, position: int, elapsed_ms: int, window_ms: int
) -> None:
    first = FirstSeen(at_ms=FIRST_AT_MS, position=first_position)

    repeat = is_repeat(first, position, FIRST_AT_MS + elapsed_ms, window_ms)

    assert repeat == (position != first_position and elapsed_ms < window_ms)


@pytest.mark.parametrize(
    "at_ms, window_ms, expected",
    [
        (0, 1_000, Segment(0, 1_000)),
        (999, 1_000, Segment(0, 1_000)),
        (1_000, 1_000, Segment(1_000, 2_000)),
        (FIRST_AT_MS, WINDOW_MS, Segment(1_732_406_400_000, 1_732_492_800_000)),  # the UTC day
        (FIRST_AT_MS - 1, 90 * 60_000, Segment(1_732_433_400_000, 1_732_438_800_000)),
    ],
)
def test_an_id_is_kept_in_the_whole_window_of_kafka_time_holding_it(
    at_ms: int, window_ms: int, expected: Segment
) -> None:
    assert segment_for(at_ms, window_ms) == expected


DAY = segment_for(FIRST_AT_MS, WINDOW_MS)


@pytest.mark.parametrize(
    "description, stream_ms, expected",
    [
        ("Kafka time still inside the segment", DAY.start_ms + HOUR_MS, False),
        ("one window past its end", DAY.end_ms + WINDOW_MS, False),
        ("1 ms short of two windows past its end", DAY.end_ms + 2 * WINDOW_MS - 1, False),
        ("two windows past its end", DAY.end_ms + 2 * WINDOW_MS, True),
        ("a week later", DAY.end_ms + 7 * WINDOW_MS, True),
    ],
)
def test_a_segment_expires_when_its_partitions_kafka_time_is_two_windows_past_it(
    description: str, stream_ms: int, expected: bool
) -> None:
    assert is_expired(DAY, stream_ms, WINDOW_MS) is expected, description


@given(
    at_ms=st.integers(min_value=0, max_value=2**45),
    later_ms=st.integers(min_value=0, max_value=10 * WINDOW_MS),
    window_ms=st.integers(min_value=1, max_value=2 * WINDOW_MS),
    position=st.integers(min_value=0, max_value=10),
)
def test_an_id_is_never_dropped_while_it_can_still_make_an_event_a_repeat(
    at_ms: int, later_ms: int, window_ms: int, position: int
) -> None:
    """Expiry and lookups never change a judgement: while an id could make an event a repeat,
    its segment is neither expired at that event's Kafka time nor skipped by its lookup."""
    segment = segment_for(at_ms, window_ms)
    now_ms = at_ms + later_ms
    first = FirstSeen(at_ms, position)
    if is_repeat(first, position + 1, now_ms, window_ms):
        assert not is_expired(segment, now_ms, window_ms)
        assert can_judge(segment, now_ms, window_ms)
    # Kept at least KEPT_WINDOWS windows of Kafka time after it was first counted.
    assert is_expired(segment, now_ms, window_ms) <= (later_ms >= KEPT_WINDOWS * window_ms)


@pytest.mark.parametrize(
    "description, since_ms, expected",
    [
        ("events inside the segment", DAY.start_ms + HOUR_MS, True),
        ("events less than a window after its end", DAY.end_ms + WINDOW_MS - 1, True),
        ("events a window after its end", DAY.end_ms + WINDOW_MS, False),
        ("events before it (out of time order)", DAY.start_ms - HOUR_MS, True),
    ],
)
def test_a_lookup_reads_only_segments_that_can_judge_its_events(
    description: str, since_ms: int, expected: bool
) -> None:
    assert can_judge(DAY, since_ms, WINDOW_MS) is expected, description
