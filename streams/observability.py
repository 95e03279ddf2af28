"""``GET /metrics`` and the gauges that are sampled rather than counted (lag, dedupe store)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import ingest

if TYPE_CHECKING:
    from .app import Meterwatch

SAMPLE_EVERY_SECONDS = 5.0


def register(mw: Meterwatch) -> None:
    app = mw.app
    metrics = mw.metrics

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            sample_gauges(mw)
            return self.bytes(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.on_partitions_revoked.connect
    async def count_rebalance(app: Any, revoked: Any, **kwargs: Any) -> None:
        metrics.rebalances.inc()

    @app.timer(SAMPLE_EVERY_SECONDS)
    async def sample() -> None:
        sample_gauges(mw)


def sample_gauges(mw: Meterwatch) -> None:
    metrics = mw.metrics
    consumer = mw.app.consumer
    names = mw.names
    # usage.events is read by the ingest stage's own consumer, not Faust's (streams/ingest.py).
    inputs = {names.usage_control, names.workspace_inbox, names.contract_inbox, names.mail_requests}
    try:
        assignment = consumer.assignment()
    except Exception:  # not started, or mid-rebalance: sample next time
        return
    # Partitions this worker gave up must not keep reporting their last lag.
    metrics.consumer_lag.clear()
    for tp in assignment:
        if tp.topic not in inputs:
            continue
        highwater = consumer.highwater(tp)
        position = consumer._read_offset.get(tp)  # noqa: SLF001 - Faust keeps no public position
        if highwater is None:
            continue
        consumed = (position + 1) if position is not None else 0
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - consumed))
    for (topic, partition), behind in ingest.consumer_lag(mw).items():
        metrics.consumer_lag.labels(topic, str(partition)).set(behind)
    metrics.dedupe_entries.set(dedupe_store_entries(mw))


def dedupe_store_entries(mw: Meterwatch) -> int:
    store = mw.tables.seen_event_ids.data
    total = 0
    for db in getattr(store, "_dbs", {}).values():
        try:
            total += int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
        except Exception:
            continue
    return total
