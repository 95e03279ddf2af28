"""The dedupe store's disk refuses writes for a while (fault suite).

The worker's file-size limit (``RLIMIT_FSIZE``, set from outside with ``prlimit``) is lowered
below what RocksDB's write-ahead log grows to, so RocksDB's writes fail as they would on a full
disk, while usage keeps arriving. The worker must not move past the events whose ids it could
not remember: ``/health`` answers 503 ``failing`` with the reason,
``meterwatch_batch_failures_total`` counts the failed batches, and once the disk takes writes
again every event is counted exactly once.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable

from tests.support.failing import caught_up_exactly, failing_count_batches
from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, usage_shown

WORKSPACES = [f"ws-disk-{i:02d}" for i in range(40)]
# Below what each partition's RocksDB write-ahead log grows to with the ids sent while the limit
# holds (about 190 KB); the worker's own log, a few KB by then, may lose lines meanwhile.
LIMIT_BYTES = 64 * 1024
PER_WORKSPACE = 250


def limit_file_size(pid: int, soft: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))


async def test_a_disk_that_refuses_the_dedupe_stores_writes_holds_the_batch_back_until_it_takes_them(
    running_worker: WorkerProcess,
    deployment: dict[str, str],
    fault_figures: Callable[[str], None],
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    events_topic = prefix + "usage.events"
    assert running_worker.process is not None
    pid = running_worker.process.pid

    await produce(bootstrap, events_topic, [(w.encode(), event(w, "email", 1)) for w in WORKSPACES])
    await eventually(lambda: usage_shown(running_worker, WORKSPACES, "email") == dict.fromkeys(WORKSPACES, 1), 60)

    limit_file_size(pid, LIMIT_BYTES)
    try:
        refused_at = time.monotonic()
        await produce(
            bootstrap,
            events_topic,
            [(w.encode(), [event(w, "email", 1) for _ in range(PER_WORKSPACE)]) for w in WORKSPACES],
        )
        reason, failures_while_refused = await failing_count_batches(running_worker)
        failed_after = time.monotonic() - refused_at
    finally:
        limit_file_size(pid, resource.RLIM_INFINITY)

    caught_up = await caught_up_exactly(running_worker, deployment, WORKSPACES, 1 + PER_WORKSPACE)
    fault_figures(
        f"\n[full disk] {len(WORKSPACES)} workspaces, {len(WORKSPACES) * PER_WORKSPACE} events while files "
        f"could not pass {LIMIT_BYTES // 1024} KiB: /health failing {failed_after:.1f}s after the limit "
        f"({reason[:120]!r}); {failures_while_refused:.0f} failed count batches while refused; "
        f"every count exact {caught_up:.1f}s after the disk took writes again"
    )
