"""A worker whose count batches fail for a while (the fault suite's refused writes and full
disk): what its health and metrics say meanwhile, and the exact catch-up afterwards."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families

from .kafka_io import read_all
from .worker import WorkerProcess, eventually, http_get, usage_shown


def batch_failures(worker: WorkerProcess) -> float:
    _, text = http_get(f"{worker.base_url}/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(text or "")
        for sample in family.samples
        if sample.name == "meterwatch_batch_failures_total" and sample.labels.get("stage") == "count"
    )


def health(worker: WorkerProcess) -> tuple[int | None, dict]:
    status, body = http_get(f"{worker.base_url}/health")
    return status, body if isinstance(body, dict) else {}


async def failing_count_batches(worker: WorkerProcess) -> tuple[str, float]:
    """Wait until ``/health`` says the count batches fail, and the worker has retried; the
    reason it gives and the failed batches counted so far."""
    await eventually(lambda: health(worker)[1].get("status") == "failing", timeout=60, interval=0.1)
    status, body = health(worker)
    assert status == 503
    assert body["reason"].startswith("count batch failed: "), body
    # The worker keeps trying: each try gives the work up, rebuilds its tables and fails again.
    await eventually(lambda: batch_failures(worker) >= 2, timeout=90)
    return body["reason"], batch_failures(worker)


async def caught_up_exactly(
    worker: WorkerProcess, deployment: dict[str, str], workspaces: list[str], expected: int
) -> float:
    """Seconds until every workspace shows ``expected`` emails and the worker is healthy; then
    that nothing is counted twice later and nothing was dead-lettered."""
    started = time.monotonic()
    want = dict.fromkeys(workspaces, expected)
    await eventually(lambda: usage_shown(worker, workspaces, "email") == want, timeout=120)
    await eventually(lambda: health(worker) == (200, health(worker)[1]), timeout=60)
    took = time.monotonic() - started
    await asyncio.sleep(3)  # a second count of anything would show by now
    assert usage_shown(worker, workspaces, "email") == want
    assert health(worker)[1]["status"] == "consuming"
    dead_letters = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.dead-letter"
    assert await read_all(deployment["METERWATCH_KAFKA_BOOTSTRAP"], dead_letters, timeout=3) == []
    return took
