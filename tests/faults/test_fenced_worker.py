"""Fault suite: a worker whose transactions are taken over (fenced) gives up its work in
hand, rejoins and carries on exactly, instead of exiting (streams/runtime/fencing.py; CONTRACT 4).

The test plays the worker that took over: it opens a transactional producer under each of the
worker's transactional ids, as the new owner of its partitions would after a rebalance the
worker missed. Usage keeps arriving meanwhile, and levels are crossed before and after.

Needs transactions, so it runs on Apache Kafka (CI) and is skipped on the embedded broker::

    bootstrap=$(bash .ci/kafka/broker.sh start /tmp/kfence | sed -n 's/^bootstrap=//p')
    METERWATCH_TEST_BOOTSTRAP=$bootstrap .venv/bin/pytest -q -s tests/faults/test_fenced_worker.py
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer

from tests.support.brokers import TestBroker
from tests.support.kafka_io import produce, read_all
from tests.support.messages import command, event
from tests.support.worker import WorkerProcess, eventually, http_get, usage_shown

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKSPACES = [f"ws_fence_{index}" for index in range(8)]
THRESHOLD = 300  # levels at 150, 240 and 300 messages; each workspace gets 1-3 per event
EVENTS_PER_HALF = 800
# Faust names a transactional id "{app id}-{topic group}-{partition}"; more groups than the
# worker has cost nothing (an id nobody uses is only registered).
TOPIC_GROUPS = range(4)


def levels_reached(usage: int) -> list[int]:
    return [level for level in (50, 80, 100) if usage * 100 >= level * THRESHOLD]


async def take_over_transactions(bootstrap: str, app_id: str, partitions: int) -> int:
    """Initialise a producer under every transactional id the worker may hold: the broker then
    fences the worker's own producers, as it does when another worker takes a partition over."""
    taken = 0
    for group in TOPIC_GROUPS:
        for partition in range(partitions):
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{app_id}-{group}-{partition}")
            await producer.start()  # InitProducerId: a newer epoch, and the worker's open transaction aborted
            await producer.stop()
            taken += 1
    return taken


async def test_a_fenced_worker_gives_up_its_work_in_hand_rejoins_and_stays_exact(
    kafka_broker: TestBroker,
    running_worker: WorkerProcess,
    deployment: dict[str, str],
    fault_figures: Callable[[str], None],
) -> None:
    if not kafka_broker.transactions:
        pytest.skip("needs transactions, which the embedded broker (Tansu) lacks; runs on Apache Kafka")
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    app_id = prefix + deployment["METERWATCH_APP_ID"]
    settings = [
        (ws.encode(), command("alert_settings", ws, metric="messages_sent", threshold=THRESHOLD, early_warnings=True))
        for ws in WORKSPACES
    ]
    await produce(bootstrap, prefix + "usage.control", settings)
    await eventually(
        lambda: _answered(bootstrap, prefix, {c["command_id"] for _, c in settings}), timeout=60, interval=0.5
    )

    rng = random.Random(11)
    halves = [
        [event(rng.choice(WORKSPACES), "messages_sent", rng.randint(1, 3)) for _ in range(EVENTS_PER_HALF)]
        for _ in range(2)
    ]
    expected: Counter[str] = Counter()
    for index, half in enumerate(halves):
        await produce(bootstrap, prefix + "usage.events", [(e["workspace_id"].encode(), e) for e in half])
        for e in half:
            expected[e["workspace_id"]] += e["quantity"]
        if index == 0:
            await eventually(
                lambda: usage_shown(running_worker, WORKSPACES) == dict(expected), timeout=60, interval=0.2
            )
            taken = await take_over_transactions(bootstrap, app_id, int(deployment["METERWATCH_PARTITIONS"]))
            print(f"\ncounted {sum(expected.values())} units, then took over {taken} transactional ids")

    await eventually(lambda: usage_shown(running_worker, WORKSPACES) == dict(expected), timeout=120, interval=0.5)
    await asyncio.sleep(3)  # anything counted late a second time would show by now
    assert usage_shown(running_worker, WORKSPACES) == dict(expected)

    assert running_worker.process.poll() is None, "the worker exited:\n" + running_worker.log_tail()
    log = running_worker.log_path.read_text()
    assert "transactions lost" in log, "the worker never noticed it was fenced: the test proved nothing"
    assert "tables rebuilt; consuming again" in log
    _, health = http_get(f"{running_worker.base_url}/health")
    assert health["status"] == "consuming", health
    _, metrics = http_get(f"{running_worker.base_url}/metrics")
    lost = [line for line in metrics.splitlines() if line.startswith("meterwatch_transactions_lost_total ")]
    assert lost and float(lost[0].split()[1]) >= 1, lost

    alerts = await read_all(bootstrap, prefix + "usage.alerts", timeout=5)
    crossings = Counter((a["workspace_id"], a["metric"], a["level"]) for a in alerts)
    assert crossings == Counter(
        {(ws, "messages_sent", level): 1 for ws, usage in expected.items() for level in levels_reached(usage)}
    )
    assert len({a["alert_id"] for a in alerts}) == len(alerts)
    dead_letters = await read_all(bootstrap, prefix + "usage.dead-letter", timeout=3)
    assert dead_letters == [], "a good event was dead-lettered when its batch was given up"
    fault_figures(
        f"[fenced worker] {sum(expected.values())} units in {2 * EVENTS_PER_HALF} events, {taken} transactional "
        f"ids taken over half-way; usage exact in {len(WORKSPACES)} workspaces; {len(alerts)} alerts, one per "
        "crossing; no dead letters; the worker gave up its work, rejoined and never exited"
    )


async def _answered(bootstrap: str, prefix: str, command_ids: set[str]) -> bool:
    results = await read_all(bootstrap, prefix + "usage.command-results", timeout=2)
    applied = {r["command_id"] for r in results if r["status"] == "applied"}
    return command_ids <= applied
