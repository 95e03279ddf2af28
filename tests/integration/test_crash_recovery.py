"""SIGKILL the worker part-way through a stream and restart it: every count stays exact (CONTRACT 4)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.brokers import TestBroker
from tests.support.kafka_io import committed_offsets, produce, read_all
from tests.support.worker import WorkerProcess, eventually, http_get, usage_shown

WORKSPACES = [f"ws_kill_{i}" for i in range(12)]


def make_events(count: int, rng: random.Random) -> list[dict]:
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": uuid.uuid4().hex,
            "workspace_id": rng.choice(WORKSPACES),
            "metric": "messages_sent",
            "quantity": rng.randint(1, 3),
            "occurred_at": now,
        }
        for _ in range(count)
    ]


def events_counted(worker: WorkerProcess) -> float:
    _, text = http_get(f"{worker.base_url}/metrics")
    samples = {
        sample.labels.get("metric"): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "meterwatch_events_counted_total"
    }
    return samples.get("messages_sent", 0.0)


def total_counted(worker: WorkerProcess) -> dict[str, int]:
    return usage_shown(worker, WORKSPACES)


async def inbox_committed(deployment: dict[str, str]) -> bool:
    """Whether the worker group has committed any counting of the workspace inbox."""
    inbox = deployment["METERWATCH_TOPIC_PREFIX"] + deployment["METERWATCH_APP_ID"] + "-workspace-inbox"
    return any((await committed_offsets(deployment, inbox)).values())


def lag_by_partition(worker: WorkerProcess) -> dict[str, float]:
    _, text = http_get(f"{worker.base_url}/metrics")
    return {
        f"{sample.labels['topic']}[{sample.labels['partition']}]": sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "meterwatch_consumer_lag_messages" and sample.value
    }


async def where_events_went_missing(worker: WorkerProcess, distinct_events: int) -> str:
    """Stage one forwards each accepted event to the workspace inbox: an inbox holding every
    event means stage one lost nothing, and the shortfall is in counting (stage two)."""
    env = worker.env
    inbox = f"{env['METERWATCH_TOPIC_PREFIX']}{env['METERWATCH_APP_ID']}-workspace-inbox"
    forwarded = {
        row[0]
        for document in await read_all(env["METERWATCH_KAFKA_BOOTSTRAP"], inbox, timeout=60)
        if document.get("kind") == "usage"
        for row in document["events"]
    }
    stage = "counting (stage two)" if len(forwarded) == distinct_events else "forwarding (stage one)"
    return f"the inbox holds {len(forwarded)} of {distinct_events} distinct events: lost in {stage}"


async def diagnose_shortfall(
    worker: WorkerProcess, expected: Counter[str], distinct_events: int, guarantee: str
) -> str:
    """Stall or loss? A stall shows as consumer lag and ends if given time; a loss does neither.

    The report also goes to tests/artifacts/, where CI keeps it.
    """
    started = time.monotonic()
    lines = []
    while True:
        counted = total_counted(worker)
        short = {ws: n - counted.get(ws, 0) for ws, n in expected.items() if counted.get(ws) != n}
        _, health = http_get(f"{worker.base_url}/health")
        lines.append(
            f"t+{120 + time.monotonic() - started:.0f}s short by {sum(short.values())} units over {len(short)} "
            f"workspaces; lag {lag_by_partition(worker)}; health {health}"
        )
        if not short or time.monotonic() - started > 180:
            break
        await asyncio.sleep(15)
    verdict = "a stall: it caught up late" if not short else "not caught up after 300 s"
    lines.append(await where_events_went_missing(worker, distinct_events))
    report = "\n".join([f"kill test ({guarantee}) short after 120 s; {verdict}", *lines, worker.log_tail(200)])
    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / f"kill-test-{guarantee}.txt").write_text(report)
    return report


@pytest.fixture(params=["broker_default", "at_least_once"])
def guarantee(request: pytest.FixtureRequest, kafka_broker: TestBroker, deployment: dict[str, str]) -> str:
    if kafka_broker.kind == "embedded" and request.param == "at_least_once":
        pytest.skip("the embedded broker has no transactions: its default is at_least_once, run above")
    if request.param == "at_least_once":
        deployment["METERWATCH_PROCESSING_GUARANTEE"] = "at_least_once"
    return request.param


async def test_sigkill_mid_stream_neither_loses_nor_doubles(
    guarantee: str, running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    rng = random.Random(7)
    singles = make_events(20_000, rng)
    batched = make_events(20_000, rng)
    expected: Counter[str] = Counter()
    for e in singles + batched:
        expected[e["workspace_id"]] += e["quantity"]
    messages = [(e["workspace_id"].encode(), e) for e in singles]
    messages += [(None, batched[i : i + 100]) for i in range(0, len(batched), 100)]
    # Some events delivered twice, as a retrying producer would: still counted once.
    messages += [(e["workspace_id"].encode(), e) for e in rng.sample(singles, 500)]
    rng.shuffle(messages)

    first, second = messages[: len(messages) // 2], messages[len(messages) // 2 :]
    await produce(bootstrap, topic, first)
    # Kill once counting is under way but not finished, and some of it is committed: counts are
    # shown before their transaction commits, and only committed work is the restart's to keep.
    quarter = sum(expected.values()) // 4
    await eventually(lambda: quarter < sum(total_counted(running_worker).values()), timeout=60, interval=0.05)
    await eventually(lambda: inbox_committed(deployment), timeout=30, interval=0.05)
    counted_before_kill = sum(total_counted(running_worker).values())
    running_worker.kill()
    assert 0 < counted_before_kill < sum(expected.values()), "the kill must land mid-stream"
    print(f"\nkilled with {counted_before_kill} of {sum(expected.values())} units counted")
    await produce(bootstrap, topic, second)  # published while the worker is down
    running_worker.start()
    running_worker.wait_healthy()
    try:
        await eventually(lambda: total_counted(running_worker) == dict(expected), timeout=120, interval=0.5)
    except AssertionError:
        raise AssertionError(
            await diagnose_shortfall(running_worker, expected, len(singles) + len(batched), guarantee)
        ) from None
    # And it stays exact: nothing counted late a second time.
    await asyncio.sleep(3)
    assert total_counted(running_worker) == dict(expected)
    # The restarted worker recovered its tables from their changelogs: it counted only what the
    # first one had not committed, not the whole stream again.
    counted_by_restarted = events_counted(running_worker)
    distinct_events = len(singles) + len(batched)
    print(f"restarted worker counted {counted_by_restarted} of {distinct_events} events")
    assert counted_by_restarted < distinct_events
