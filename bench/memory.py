"""Memory: a worker's RSS after 1M and after 5M distinct event ids (batch messages), with what
can be seen of where it goes from outside the process."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import log, mib, rate
from producing import Producer, make_shape
from worker import MeterwatchWorker, wait_counter

# What /metrics and /proc can tell: RSS split into anonymous memory (the Python heap, RocksDB's
# block cache and memtables, every malloc) and file-backed pages (mapped libraries, RocksDB files
# read through mmap); prometheus_client's process_resident_memory_bytes is the same RSS seen from
# inside. The worker's meterwatch_memory_bytes splits the anonymous part: RocksDB's block cache
# (memtables charged to it), memtables and table readers, and glibc malloc's bytes in use (RocksDB
# and Python objects over 512 bytes) and free; the anonymous memory beyond what malloc has in use
# is Python's own small-object arenas, thread stacks, and the free malloc pages still resident.
BREAKDOWN_NOTE = (
    "RSS split from /proc (RssAnon: Python heap + RocksDB caches/memtables + other malloc; RssFile: mapped files); "
    "the anonymous part split by the worker's meterwatch_memory_bytes (sampled every 2 s): RocksDB (block cache "
    "with the memtables charged to it, memtables, table readers), malloc in use (RocksDB included) and free "
    "(resident or handed back); anon beyond malloc in use = RssAnon - malloc in use (Python's small-object "
    "arenas, thread stacks, free malloc pages still resident)"
)
MEMORY_METRIC = "meterwatch_memory_bytes"


def memory_parts(worker: MeterwatchWorker) -> dict[str, float]:
    """``meterwatch_memory_bytes`` by part, from the worker's /metrics."""
    status, body = worker.get("/metrics")
    if status != 200:
        return {}
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    parts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(MEMORY_METRIC + "{"):
            labels, _, value = line.rpartition(" ")
            part = labels.split('part="', 1)[1].split('"', 1)[0]
            parts[part] = float(value)
    return parts


def snapshot(worker: MeterwatchWorker) -> dict[str, Any]:
    memory = worker.memory()
    metrics = worker.metrics()
    parts = memory_parts(worker)
    anon = memory.get("RssAnon")
    if anon is not None and "malloc_in_use" in parts:
        parts["anon_beyond_malloc_in_use"] = anon - parts["malloc_in_use"]
    return {
        "memory_parts_bytes": parts,
        "rss_bytes": memory.get("VmRSS"),
        "peak_rss_bytes": memory.get("VmHWM"),
        "rss_anon_bytes": memory.get("RssAnon"),
        "rss_file_bytes": memory.get("RssFile"),
        "process_resident_memory_bytes": metrics.get("process_resident_memory_bytes"),
        "dedupe_store_entries": metrics.get("meterwatch_dedupe_store_entries"),
        "disk_bytes_by_table": worker.disk(),
    }


def run_dedupe_memory(
    args: argparse.Namespace,
    bootstrap: str,
    tag: str,
    work: Path,
    log_dir: Path,
    on_step: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """One worker; ``--dedupe-first`` ids produced before it starts, measured when counted; then
    the rest up to ``--dedupe-second`` produced while it runs (skipped with --quick)."""
    shape = make_shape("batch", 0, args.batch_size)
    per = shape.events_per_message
    prefix = f"bench{tag}dedupe."
    topic = f"{prefix}usage.events"
    rng = random.Random(f"{tag}-dedupe")
    producer = Producer(bootstrap, args.partitions)
    steps = [args.dedupe_first] + ([] if args.quick else [args.dedupe_second])

    async def produce(start: int, stop: int) -> dict[str, Any]:
        from producing import in_chunks

        await producer.create_topic(topic)
        return await producer.produce(topic, in_chunks(shape, rng, start // per, stop // per, chunk=2_000))

    worker = MeterwatchWorker(
        bootstrap, prefix, f"mw{tag}dedupe", args.partitions, work / "mw-dedupe-data", log_dir / "worker-dedupe.log"
    )
    result: dict[str, Any] = {
        "env": worker.env_settings,
        "steps": [],
        "skipped_5m": args.quick,
        "breakdown_note": BREAKDOWN_NOTE,
    }
    trajectory: list[tuple[float, int, int | None, float | None]] = []
    result["rss_trajectory"] = trajectory

    log(f"memory: producing {steps[0]:,} events before the worker starts ...")
    produced = asyncio.run(produce(0, steps[0]))
    log(f"memory: produced in {produced['seconds']:.1f}s (not counted)")
    try:
        worker.start()
        healthy_at, _guarantee = worker.wait_healthy(timeout=args.startup_timeout)

        def progress(_elapsed: float, counted: int) -> None:
            elapsed = time.perf_counter() - healthy_at
            rss = worker.memory().get("VmRSS")
            in_use = memory_parts(worker).get("malloc_in_use")
            trajectory.append((round(elapsed, 1), counted, rss, in_use))
            log(
                f"memory: {counted:,} counted {elapsed:.0f}s after the worker became healthy, RSS {mib(rss)}, malloc in use {mib(in_use)}"
            )

        done = 0
        for index, total in enumerate(steps):
            step_started = time.perf_counter() if index else healthy_at
            if index > 0:
                log(f"memory: producing {total - done:,} more events while the worker runs ...")
                more = asyncio.run(produce(done, total))
                log(f"memory: produced in {more['seconds']:.1f}s (overlapping with counting)")
            timeout = args.dedupe_timeout if index > 0 else max(args.phase_timeout, total / 1000)
            counted = wait_counter([worker], total, timeout=timeout, poll=0.5, on_progress=progress)
            seconds = counted["at"] - step_started
            time.sleep(3)  # measure memory at rest, not mid-batch
            step = {
                "distinct_ids_sent": total,
                "complete": counted["complete"],
                "counted": counted["counted"],
                "seconds": seconds,
                "events_per_s": (counted["counted"] - done) / seconds if seconds > 0 else None,
                **snapshot(worker),
            }
            result["steps"].append(step)
            if on_step is not None:
                on_step(result)
            disk = sum(step["disk_bytes_by_table"].values())
            log(
                f"memory: {total:,} ids: complete={step['complete']} RSS {mib(step['rss_bytes'])}, disk {mib(disk)}, {rate(step['events_per_s'])} events/s"
            )
            if not counted["complete"]:
                break
            done = total
    finally:
        worker.stop()
    first, *rest = result["steps"] or [None]
    if first and rest and first["rss_bytes"] and rest[0]["rss_bytes"]:
        second = rest[0]
        result["rss_ratio"] = second["rss_bytes"] / first["rss_bytes"]
        extra_ids = second["counted"] - first["counted"]
        if extra_ids > 0:
            result["growth_bytes_per_id"] = {
                key: ((second.get(key) or 0) - (first.get(key) or 0)) / extra_ids
                for key in ("rss_bytes", "rss_anon_bytes", "rss_file_bytes")
            }
            result["growth_bytes_per_id"]["disk_bytes"] = (
                sum(second["disk_bytes_by_table"].values()) - sum(first["disk_bytes_by_table"].values())
            ) / extra_ids
        before, after = first.get("memory_parts_bytes") or {}, second.get("memory_parts_bytes") or {}
        result["growth_bytes_by_part"] = {part: after[part] - before.get(part, 0) for part in after}
    return result
