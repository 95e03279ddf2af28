"""Alert latency at half the peak rate: a worker with alert settings on a few hundred
workspaces, live events at R/2 events/s, and for every ``usage.alerts`` record the delay from its
``triggered_at`` (the Kafka timestamp of the event that caused it) to the alert record's own
Kafka timestamp (when it was published) and to when this benchmark received it."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from harness import RESULTS, CpuSplit, PhaseFailed, log, tail
from meterwatch.models.internal import EVENT_ID
from producing import METRIC, Producer, make_shape
from worker import MeterwatchWorker, wait_counter


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def levels_reached(usage: int, threshold: int) -> int:
    # Thresholds are at least 10, so 50%, 80% and 100% are distinct usages and each event
    # (quantity 1) reaches at most one level: every level reached is one alert.
    return sum(1 for level in (50, 80, 100) if usage * 100 >= level * threshold)


def alert_command(workspace: str, threshold: int) -> bytes:
    return orjson.dumps(
        {
            "type": "alert_settings",
            "command_id": str(uuid.uuid4()),
            "issued_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "workspace_id": workspace,
            "actor": {"id": "bench", "billing_permission": True},
            "metric": METRIC,
            "threshold": threshold,
            "early_warnings": True,
            "enabled": True,
        }
    )


async def _consumer(bootstrap: str, topic: str) -> Any:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    return consumer


async def _measure(
    args: argparse.Namespace,
    worker: MeterwatchWorker,
    per_second: float,
    rng: random.Random,
    on_live: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    shape = make_shape("single1k", 0, args.batch_size)
    workspaces = shape.workspace_names()
    messages_total = max(shape.workspaces, int(per_second * args.latency_seconds))
    per_workspace = messages_total / shape.workspaces
    alerted = workspaces[: args.latency_workspaces]
    # Thresholds spread over the run, so alerts come throughout it and not in one burst.
    thresholds = {ws: max(10, int(per_workspace * rng.uniform(0.1, 1.0))) for ws in alerted}
    producer = Producer(worker.bootstrap, worker.partitions)
    prefix = worker.prefix

    results = await _consumer(worker.bootstrap, f"{prefix}usage.command-results")
    alerts = await _consumer(worker.bootstrap, f"{prefix}usage.alerts")
    try:
        commands = [(ws.encode(), alert_command(ws, t)) for ws, t in thresholds.items()]
        await producer.produce(f"{prefix}usage.control", [commands])
        answered: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while sum(answered.values()) < len(commands):
            if time.monotonic() > deadline:
                raise PhaseFailed(
                    f"only {answered} of {len(commands)} alert settings answered in 60s:\n{tail(worker.log_path)}"
                )
            for records in (await results.getmany(timeout_ms=500)).values():
                for record in records:
                    status = orjson.loads(record.value).get("status", "?")
                    answered[status] = answered.get(status, 0) + 1
        if answered.get("applied", 0) != len(commands):
            raise PhaseFailed(f"alert settings answered {answered}, expected all applied")
        # A worker can answer /health before its ingest reads usage.events; events sent then would
        # wait for it and time start-up, not alerting. One event for each workspace without an
        # alert setting, counted, shows the pipeline is flowing before the clocked events start.
        warm_up = shape.encode(rng, len(alerted), shape.workspaces - len(alerted))
        await producer.produce(f"{prefix}usage.events", [warm_up])
        deadline = time.monotonic() + 120
        while (worker.counted() or 0) < len(warm_up):
            worker.check_alive()
            if time.monotonic() > deadline:
                raise PhaseFailed(f"warm-up events not counted in 120s:\n{tail(worker.log_path)}")
            await asyncio.sleep(0.1)
        log(
            f"latency: {len(commands)} settings applied, {len(warm_up)} warm-up events counted; {messages_total:,} events at {per_second:,.0f}/s ..."
        )

        live = shape.encode(rng, 0, messages_total)
        on_live()
        cpu = CpuSplit(worker.pid)
        cpu_cores: dict[str, float] | None = None
        delays_published: list[float] = []
        delays_received: list[float] = []
        causes: dict[str, tuple[float, float]] = {}  # cause event id -> (triggered, published)
        producing = asyncio.ensure_future(producer.produce_paced(f"{prefix}usage.events", live, per_second))
        expected_alerts = sum(
            levels_reached(shape.expected(messages_total).get(ws, 0), t) for ws, t in thresholds.items()
        )
        quiet_since = None
        while True:
            batch = await alerts.getmany(timeout_ms=200)
            received = time.time()
            for records in batch.values():
                for record in records:
                    alert = orjson.loads(record.value)
                    triggered = datetime.fromisoformat(alert["triggered_at"]).timestamp()
                    delays_published.append(record.timestamp / 1000 - triggered)
                    delays_received.append(received - triggered)
                    causes[alert["cause_event_id"]] = (triggered, record.timestamp / 1000)
            if not producing.done():
                continue
            if cpu_cores is None:
                cpu_cores = cpu.finish()
            if len(delays_published) >= expected_alerts:
                break
            if batch:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 15:
                break
        paced = producing.result()
        to_inbox, inbox_to_alert = await _split_at_inbox(worker, causes)
    finally:
        await results.stop()
        await alerts.stop()

    def stats(values: list[float]) -> dict[str, float | None]:
        return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values) if values else None}

    return {
        "target_rate": per_second,
        "produced": paced,
        "events": messages_total,
        "warm_up_events": len(warm_up),
        "alerted_workspaces": len(thresholds),
        "thresholds": f"{min(thresholds.values())}…{max(thresholds.values())} (early warnings on)",
        "alerts": len(delays_published),
        "expected_alerts": expected_alerts,
        "published_delay_seconds": stats(delays_published),
        "received_delay_seconds": stats(delays_received),
        # The published delay split where stage one hands the cause event to counting: from the
        # event to the inbox record carrying it, and from that record to the alert record.
        "to_inbox_seconds": stats(to_inbox),
        "inbox_to_alert_seconds": stats(inbox_to_alert),
        # Cores used while the live events were being produced, by process.
        "cpu_cores": cpu_cores,
    }


async def _split_at_inbox(
    worker: MeterwatchWorker, causes: dict[str, tuple[float, float]]
) -> tuple[list[float], list[float]]:
    """For each alert, the inbox record that carried its cause event (by its Kafka timestamp)."""
    inbox = await _consumer(worker.bootstrap, f"{worker.prefix}{worker.app_id}-workspace-inbox")
    to_inbox: list[float] = []
    inbox_to_alert: list[float] = []
    try:
        left = set(causes)
        quiet = 0
        while left and quiet < 10:
            batch = await inbox.getmany(timeout_ms=500, max_records=5000)
            quiet = 0 if batch else quiet + 1
            for records in batch.values():
                for record in records:
                    at = record.timestamp / 1000
                    for row in orjson.loads(record.value).get("rows", ()):
                        if row[EVENT_ID] in left:
                            left.discard(row[EVENT_ID])
                            triggered, published = causes[row[EVENT_ID]]
                            to_inbox.append(at - triggered)
                            inbox_to_alert.append(published - at)
    finally:
        await inbox.stop()
    return to_inbox, inbox_to_alert


def run_latency(
    args: argparse.Namespace, bootstrap: str, peak: float, tag: str, work: Path, log_dir: Path
) -> dict[str, Any]:
    per_second = peak / 2
    worker = MeterwatchWorker(
        bootstrap,
        f"bench{tag}lat.",
        f"mw{tag}lat",
        args.partitions,
        work / "mw-latency-data",
        log_dir / "worker-latency.log",
    )
    spy_path = RESULTS / "profile-latency.raw" if args.profile else None
    spies = []

    def profile_live_phase() -> None:
        if spy_path is not None:
            from profiling import start_py_spy

            spies.append(start_py_spy(worker.pid, spy_path, log_dir))

    worker.start()
    try:
        worker.wait_healthy(timeout=args.startup_timeout)
        try:
            result = asyncio.run(
                _measure(args, worker, per_second, random.Random(f"{tag}-latency"), on_live=profile_live_phase)
            )
        finally:
            if spies:
                from profiling import stop_py_spy

                stop_py_spy(spies[0])
        if spy_path is not None and spy_path.exists():
            from profile_summary import render, summarise

            result["profile_summary"] = summary = summarise(spy_path)
            (RESULTS / "profile-latency.txt").write_text(render(summary) + "\n")
        counted = wait_counter([worker], result["events"] + result["warm_up_events"], timeout=60)
        result["counted"] = counted["counted"]
        result["peak_rate"] = peak
        result["batches"] = worker.batches()
        return result
    finally:
        worker.stop()
