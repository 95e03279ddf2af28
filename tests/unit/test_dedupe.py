"""Repeats of an ``event_id`` within the dedupe window count once (CONTRACT 3.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.core.dedupe import FirstSeen, decode_first_seen, encode_first_seen, is_repeat

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
