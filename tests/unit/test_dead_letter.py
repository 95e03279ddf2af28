"""Dead-letter records stay within the broker's message size, however large the input was."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from meterwatch.models.outputs import MAX_DEAD_LETTER_BYTES, dead_letter


def letter(value: bytes) -> dict:
    return dead_letter(
        source_topic="usage.events",
        partition=0,
        offset=1,
        key=value,
        value=value,
        code="invalid_json",
        message="m",
        at=datetime(2026, 11, 24, tzinfo=UTC),
    )


@pytest.mark.parametrize("value", [b"\x01" * 1_000_000, b"\xff" * 1_000_000, b"a" * 1_000_000])
def test_a_huge_input_is_cut_and_says_so_and_the_record_fits_in_1_mb(value: bytes) -> None:
    record = letter(value)
    assert len(orjson.dumps(record)) < 1_000_000
    assert record["value_truncated"] is True and record["value_length"] == len(value)


def test_an_input_within_the_cap_is_kept_whole() -> None:
    value = b"x" * MAX_DEAD_LETTER_BYTES
    record = letter(value)
    assert record["value"] == value.decode() and "value_truncated" not in record
