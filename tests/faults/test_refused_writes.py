"""The broker refuses a table's writes for a while (fault suite).

The workspace table's changelog is set to take no record batch larger than 200 bytes, so every
write of a workspace value (a few hundred bytes) is refused while usage keeps arriving; the
markers that end transactions (under 100 bytes) still go through. The worker must not move past the
events whose counts it could not write: ``/health`` answers 503 ``failing`` with the reason,
``meterwatch_batch_failures_total`` counts the failed batches, and once the changelog takes
records again every event is counted exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.brokers import TestBroker
from tests.support.failing import caught_up_exactly, failing_count_batches
from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, usage_shown

WORKSPACES = [f"ws-refused-{i:02d}" for i in range(20)]
BROKER_DEFAULT_MAX_MESSAGE_BYTES = "1048588"


async def set_max_message_bytes(bootstrap: str, topic: str, value: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": value})])
    finally:
        await admin.close()


async def test_refused_table_writes_hold_the_batch_back_until_the_broker_takes_them(
    kafka_broker: TestBroker,
    running_worker: WorkerProcess,
    deployment: dict[str, str],
    fault_figures: Callable[[str], None],
) -> None:
    if kafka_broker.kind == "embedded":
        pytest.skip("refuses writes through a topic's max.message.bytes, which only Apache Kafka is relied on to apply")
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    changelog = prefix + deployment["METERWATCH_APP_ID"] + "-workspaces-changelog"
    events_topic = prefix + "usage.events"

    await produce(bootstrap, events_topic, [(w.encode(), event(w, "email", 1)) for w in WORKSPACES for _ in range(5)])
    await eventually(lambda: usage_shown(running_worker, WORKSPACES, "email") == dict.fromkeys(WORKSPACES, 5), 60)

    await set_max_message_bytes(bootstrap, changelog, "200")
    refused_at = time.monotonic()
    await produce(bootstrap, events_topic, [(w.encode(), event(w, "email", 1)) for w in WORKSPACES for _ in range(7)])
    reason, failures_while_refused = await failing_count_batches(running_worker)
    failed_after = time.monotonic() - refused_at

    await set_max_message_bytes(bootstrap, changelog, BROKER_DEFAULT_MAX_MESSAGE_BYTES)
    caught_up = await caught_up_exactly(running_worker, deployment, WORKSPACES, 12)
    fault_figures(
        f"\n[refused writes] {len(WORKSPACES)} workspaces, 140 events while the changelog refused writes: "
        f"/health failing {failed_after:.1f}s after the refusal ({reason[:120]!r}); "
        f"{failures_while_refused:.0f} failed count batches while refused; every count exact "
        f"{caught_up:.1f}s after the broker took writes again"
    )
