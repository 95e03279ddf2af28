"""A batch's latencies go into a histogram in one pass, exactly as one observe() each would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from meterwatch.streams.metrics import observe_many
from prometheus_client import CollectorRegistry, Histogram, generate_latest

BUCKETS = (0.005, 0.1, 1.0, 5.0, 60.0)


def _exposed(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@given(st.lists(st.sampled_from([0.0, 0.005, 0.1, 1.0, 5.0, 60.0]) | st.floats(0, 1e6), max_size=200))
def test_observe_many_exposes_what_one_observe_per_value_exposes(values: list[float]) -> None:
    one_by_one, bulk = CollectorRegistry(), CollectorRegistry()
    single = Histogram("latency_seconds", "x", buckets=BUCKETS, registry=one_by_one)
    many = Histogram("latency_seconds", "x", buckets=BUCKETS, registry=bulk)
    for value in values:
        single.observe(value)
    observe_many(many, values)
    # From an empty histogram the floats are added in the same order, so even the sums agree.
    assert _exposed(bulk) == _exposed(one_by_one)
