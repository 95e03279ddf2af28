"""Stage one's process and the worker that runs it: what the child reports is what the worker's
``/metrics`` shows, as if stage one ran inside the worker."""

from __future__ import annotations

import types

import orjson
from meterwatch.config import load_settings
from meterwatch.streams.metrics import Metrics
from meterwatch.streams.pipeline import ingest
from meterwatch.streams.pipeline.ingest_process import IngestProcess, RecordedMetrics, Updates
from prometheus_client import generate_latest


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_the_childs_updates_reach_the_workers_metrics_as_if_made_there() -> None:
    first_updates = []
    updates = Updates(lambda: first_updates.append(True))
    recorded = RecordedMetrics(updates)
    recorded.events_rejected.labels("invalid_json").inc(2)
    recorded.events_rejected.labels("zero_quantity").inc(1)
    recorded.batch_size.labels("ingest").observe(40)
    recorded.batch_seconds.labels("ingest").observe(0.25)
    recorded.consumer_lag.labels("usage.events", "0").set(7)  # the lag travels whole, below
    assert first_updates == [True], "the first update of a report asks for the report to go out now"

    # What the child writes on its pipe, one JSON line.
    line = orjson.dumps({"joined": True, "lag": [["usage.events", 0, 7]], "updates": updates.take()})
    assert updates.take() == []

    app = types.SimpleNamespace()
    mw = types.SimpleNamespace(app=app, settings=load_settings({}), metrics=Metrics())
    stage = IngestProcess(mw)
    stage._apply(orjson.loads(line))  # noqa: SLF001

    metrics = mw.metrics
    assert sample(metrics, "meterwatch_events_rejected_total", {"reason": "invalid_json"}) == 2
    assert sample(metrics, "meterwatch_events_rejected_total", {"reason": "zero_quantity"}) == 1
    assert sample(metrics, "meterwatch_batch_messages_count", {"stage": "ingest"}) == 1
    assert sample(metrics, "meterwatch_batch_messages_sum", {"stage": "ingest"}) == 40
    assert sample(metrics, "meterwatch_batch_duration_seconds_sum", {"stage": "ingest"}) == 0.25
    assert stage.joined
    assert ingest.is_reading(mw)  # type: ignore[arg-type]
    # No process running: no lag to report (the last one reported is stale).
    assert stage.lag() == {}
    assert b"meterwatch_ingest_process" not in generate_latest(metrics.registry)
    ingest.forget_service(mw)  # type: ignore[arg-type]
