"""The dedupe window runs on the Kafka time of the events, for judging repeats and for
forgetting ids alike (CONTRACT 3.1, ``event_id``)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import healthy_worker
from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, scrape, usage_shown

pytestmark = pytest.mark.integration

WINDOW_S = 2
WINDOW_MS = WINDOW_S * 1000
WORKSPACE = "ws_dedupe"


def ids_held(worker: WorkerProcess) -> float:
    _, samples = scrape(worker)
    return samples[("meterwatch_dedupe_store_entries", ())]


def repeats(worker: WorkerProcess) -> float:
    _, samples = scrape(worker)
    return samples.get(("meterwatch_events_repeated_total", ()), 0)


def sms(worker: WorkerProcess) -> int | None:
    return usage_shown(worker, [WORKSPACE], "sms").get(WORKSPACE)


async def test_ids_are_kept_by_the_kafka_time_of_events_however_long_the_wall_clock_runs(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    env = {**deployment, "METERWATCH_DEDUPE_WINDOW": f"{WINDOW_S}s"}
    bootstrap = env["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = env["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    key = WORKSPACE.encode()
    # A worker catching up an hour behind: its events were published an hour ago.
    base = int(time.time() * 1000) - 3_600_000
    base += 100 - base % WINDOW_MS  # 100 ms into a window of Kafka time
    occurred = datetime.fromtimestamp((base - 60_000) / 1000, tz=UTC)
    first = event(WORKSPACE, quantity=1, event_id="evt-first", at=occurred)

    with healthy_worker(env, tmp_path / "worker.log") as worker:
        await produce(bootstrap, topic, [(key, first)], timestamp_ms=base)
        await eventually(lambda: sms(worker) == 1)

        # Three windows of wall clock pass; the events' Kafka time does not. A copy published
        # one second after the first is a repeat, and the id is still held.
        await asyncio.sleep(3 * WINDOW_S)
        await produce(
            bootstrap,
            topic,
            [(key, first), (key, event(WORKSPACE, quantity=10, at=occurred))],
            timestamp_ms=base + 1000,
        )
        await eventually(lambda: sms(worker) == 11)
        assert repeats(worker) == 1
        assert ids_held(worker) == 2

        # Kafka time moves three windows on: both ids are two windows behind it, and dropped.
        later = base + 3 * WINDOW_MS
        await produce(bootstrap, topic, [(key, event(WORKSPACE, quantity=100, at=occurred))], timestamp_ms=later)
        await eventually(lambda: sms(worker) == 111)
        await eventually(lambda: ids_held(worker) == 1, timeout=10)

        # A copy published three windows after the first is a new delivery, counted.
        await produce(bootstrap, topic, [(key, first)], timestamp_ms=later + 1)
        await eventually(lambda: sms(worker) == 112)
        assert repeats(worker) == 1
