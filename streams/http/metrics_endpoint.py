"""``GET /metrics`` and the gauges that are sampled rather than counted (lag, dedupe store)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ...allocator import malloc_usage, release_free_memory
from ..pipeline import ingest

if TYPE_CHECKING:
    from ..app import Meterwatch

SAMPLE_EVERY_SECONDS = 5.0
# Often enough that a worker back at rest shows its resting memory within a couple of seconds;
# a pass takes a few ms, in a thread.
RELEASE_FREE_MEMORY_EVERY_SECONDS = 2.0


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

    @app.timer(RELEASE_FREE_MEMORY_EVERY_SECONDS)
    async def release_memory() -> None:
        # meterwatch.allocator: what malloc keeps after RocksDB's compactions and large batches.
        # Both calls walk malloc's arenas (milliseconds), so they run in a thread, and the
        # memory gauges are set here rather than at every scrape.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, release_free_memory)
        malloc = await loop.run_in_executor(None, malloc_usage)
        for part, size in {**mw.tables.seen_event_ids.memory(), **malloc}.items():
            metrics.memory.labels(part).set(size)


def sample_gauges(mw: Meterwatch) -> None:
    metrics = mw.metrics
    consumer = mw.app.consumer
    inputs = mw.names.lag_watched()
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
    return mw.tables.seen_event_ids.data.entries()
