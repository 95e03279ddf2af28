"""Stage one through a real broker and a real worker: every good event reaches its workspace,
whatever shares its message or its batch, and a worker upgraded from the Faust-agent version
carries on where that agent stopped (CONTRACT 3.1, 5.4)."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import healthy_worker
from tests.support.kafka_io import produce, read_all, topic_reader
from tests.support.messages import event
from tests.support.processes import children_of
from tests.support.worker import WorkerProcess, eventually, usage_shown

pytestmark = pytest.mark.integration


def topics(deployment: dict[str, str]) -> tuple[str, str, str]:
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    return deployment["METERWATCH_KAFKA_BOOTSTRAP"], prefix + "usage.events", prefix + "usage.dead-letter"


async def test_a_huge_key_and_a_batch_lose_no_neighbour(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap, events_topic, dead_letter_topic = topics(deployment)
    others = [f"ws-n{i:02d}" for i in range(40)]
    singles = [(w.encode(), event(w, "email", 1)) for i in range(25) for w in others]
    batch = [event("ws-batch", "sms", 2) for _ in range(100)]
    huge_key = b"k" * 10_240
    messages = singles[:500] + [(huge_key, batch)] + singles[500:]
    assert len(singles) == 1000
    await produce(bootstrap, events_topic, messages)

    expected = {w: 25 for w in others}
    await eventually(lambda: usage_shown(running_worker, others, "email") == expected, timeout=60)
    await eventually(lambda: usage_shown(running_worker, ["ws-batch"], "sms") == {"ws-batch": 200}, timeout=30)
    assert await read_all(bootstrap, dead_letter_topic, timeout=3) == []


async def test_a_mixed_batch_dead_letters_only_its_bad_events(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap, events_topic, dead_letter_topic = topics(deployment)
    good = [event("ws-mixed", "sms", 3) for _ in range(4)]
    bad = [
        {**event("ws-mixed"), "metric": "carrier_pigeons"},
        event("ws-mixed", "sms", 0),
        event("ws-mixed", "seats", -2),
        event("ws-mixed", "fin_resolutions", 1),  # no conversation
        {**event("ws-mixed"), "quantity": 1.5},
    ]
    mixed = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4], good[3]]
    # Slow-path timestamps in a good event of another workspace: accepted all the same.
    odd_time = {**event("ws-mixed-2", "phone", 7), "occurred_at": event("x")["occurred_at"].replace("T", " ")}
    await produce(bootstrap, events_topic, [(b"ws-mixed", mixed), (b"other-key", odd_time)])

    await eventually(lambda: usage_shown(running_worker, ["ws-mixed"], "sms") == {"ws-mixed": 12})
    await eventually(lambda: usage_shown(running_worker, ["ws-mixed-2"], "phone") == {"ws-mixed-2": 7})
    letters = await read_all(bootstrap, dead_letter_topic, expect=len(bad), timeout=30)
    assert Counter(letter["error"]["code"] for letter in letters) == Counter(
        ["unknown_metric", "zero_quantity", "negative_seats", "missing_conversation_id", "invalid_schema"]
    )
    assert sorted(orjson.loads(letter["value"])["event_id"] for letter in letters) == sorted(b["event_id"] for b in bad)
    assert {(letter["source_topic"], letter["key"]) for letter in letters} == {(events_topic, "ws-mixed")}


async def test_an_upgraded_worker_starts_where_the_faust_agent_stopped(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    bootstrap, events_topic, _ = topics(deployment)
    partitions = int(deployment["METERWATCH_PARTITIONS"])
    faust_group = deployment["METERWATCH_TOPIC_PREFIX"] + deployment["METERWATCH_APP_ID"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(events_topic, partitions, 1)])
    finally:
        await admin.close()
    # What the earlier version already counted: its Faust group committed past these.
    old = [(b"ws-upgrade", event("ws-upgrade", "sms", 1000)) for _ in range(5)]
    await produce(bootstrap, events_topic, old)
    # The offsets after the last records read (the embedded broker's end offsets are not exact).
    reader = topic_reader(bootstrap, events_topic)
    await reader.start()
    ends: dict[TopicPartition, int] = {}
    try:
        while sum(ends.values()) < len(old):
            for tp, records in (await reader.getmany(timeout_ms=1000)).items():
                ends[tp] = records[-1].offset + 1
    finally:
        await reader.stop()
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=faust_group, enable_auto_commit=False)
    await committer.start()
    try:
        committer.assign(list(ends))
        await committer.commit(ends)
    finally:
        await committer.stop()

    with healthy_worker(deployment, tmp_path / "worker.log") as worker:
        await produce(bootstrap, events_topic, [(b"ws-upgrade", event("ws-upgrade", "sms", 1)) for _ in range(3)])
        await eventually(lambda: usage_shown(worker, ["ws-upgrade"], "sms") == {"ws-upgrade": 3})
        await eventually(lambda: usage_shown(worker, ["ws-upgrade"], "sms") == {"ws-upgrade": 3}, timeout=3)


async def test_stage_one_runs_beside_the_worker_and_a_dead_one_takes_the_worker_down(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    """Stage one reads usage.events in a child process of the worker. Killed, it takes the worker
    down with an error, for its orchestrator to restart; the restarted worker counts what was
    sent meanwhile, and nothing twice."""
    bootstrap, events_topic, _ = topics(deployment)
    assert running_worker.process is not None
    stage_one = [
        p for p in children_of(running_worker.process.pid) if "meterwatch.streams.pipeline.ingest_process" in p.command
    ]
    assert len(stage_one) == 1, children_of(running_worker.process.pid)
    before = [event("ws-stage-one", "sms", 2) for _ in range(50)]
    await produce(bootstrap, events_topic, [(b"ws-stage-one", e) for e in before])
    await eventually(lambda: usage_shown(running_worker, ["ws-stage-one"], "sms") == {"ws-stage-one": 100})

    os.kill(stage_one[0].pid, signal.SIGKILL)
    assert running_worker.process.wait(timeout=30) not in (0, None)
    assert "ingest: its process" in running_worker.log_tail(200)
    assert not stage_one[0].alive()

    after = [event("ws-stage-one", "sms", 3) for _ in range(50)]
    await produce(bootstrap, events_topic, [(b"ws-stage-one", e) for e in [*after, *before[:10]]])
    running_worker.start()
    running_worker.wait_healthy()
    await eventually(lambda: usage_shown(running_worker, ["ws-stage-one"], "sms") == {"ws-stage-one": 250}, timeout=60)
