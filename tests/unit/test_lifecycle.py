"""The one-line rebalance and recovery summaries."""

from __future__ import annotations

from collections import Counter

import pytest
from faust.types import TP
from meterwatch.streams.runtime.rebalance_log import partitions_summary, records_behind


@pytest.mark.parametrize(
    ("partitions", "expected"),
    [
        ([], "0 partitions"),
        ([TP("usage.events", 2), TP("usage.events", 0)], "2 partitions: usage.events[0,2]"),
        (
            {TP("b-inbox", 1), TP("a-events", 3), TP("a-events", 1)},
            "3 partitions: a-events[1,3] b-inbox[1]",
        ),
    ],
)
def test_partitions_summary_counts_and_sorts(partitions: list[TP], expected: str) -> None:
    assert partitions_summary(partitions) == expected


@pytest.mark.parametrize(
    ("highwaters", "offsets", "expected"),
    [
        ({}, {}, 0),
        ({"a": 10}, {}, 11),  # nothing read: offsets 0..10 to go
        ({"a": 10}, {"a": 4}, 6),
        ({"a": 10, "b": 3}, {"a": 10, "b": 5}, 0),  # past the highwater counts as done
        ({"a": 5}, {"a": None}, 6),  # Faust fills unknown offsets with None: nothing read yet
        ({"a": None, "b": 2}, {}, 3),  # a highwater not known yet: nothing to read there
    ],
)
def test_records_behind(highwaters: dict[str, int | None], offsets: dict[str, int | None], expected: int) -> None:
    assert records_behind(Counter(highwaters), Counter(offsets)) == expected
