"""A batch's latencies go into a histogram in one sort, exactly as one observe() each would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.streams.metrics import observe_ages
from prometheus_client import CollectorRegistry, Histogram, generate_latest

BUCKETS = (0.005, 0.1, 1.0, 5.0, 60.0)
NOW_MS = 1_764_800_000_000


def _exposed(registry: CollectorRegistry) -> tuple[list[str], float]:
    """The exposition's lines but the sum, and the sum."""
    lines, total = [], 0.0
    for line in generate_latest(registry).decode().splitlines():
        if "_created" in line:
            continue
        if line.startswith("latency_seconds_sum"):
            total = float(line.split()[-1])
        else:
            lines.append(line)
    return lines, total


# Ages in milliseconds around every bucket bound (and events stamped after now), and any age.
AGES = st.sampled_from([-5, -1, 0, 1, 4, 5, 6, 99, 100, 101, 999, 1000, 1001, 5000, 60000, 60001]) | st.integers(
    -10_000, 10_000_000
)


@given(st.lists(AGES, max_size=300))
def test_observe_ages_exposes_what_one_observe_per_value_exposes(ages: list[int]) -> None:
    one_by_one, bulk = CollectorRegistry(), CollectorRegistry()
    single = Histogram("latency_seconds", "x", buckets=BUCKETS, registry=one_by_one)
    many = Histogram("latency_seconds", "x", buckets=BUCKETS, registry=bulk)
    times = [NOW_MS - age for age in ages]
    for at in times:
        single.observe(max(0, NOW_MS - at) / 1000)
    observe_ages(many, NOW_MS, times)

    expected_lines, expected_sum = _exposed(one_by_one)
    lines, total = _exposed(bulk)
    assert lines == expected_lines
    assert total == pytest.approx(expected_sum, rel=1e-12, abs=1e-9)


def test_a_batch_without_events_observes_nothing() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("latency_seconds", "x", buckets=BUCKETS, registry=registry)
    observe_ages(histogram, NOW_MS, [])
    assert "latency_seconds_count 0.0" in generate_latest(registry).decode()
