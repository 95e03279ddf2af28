"""The ingest loop against in-memory Kafka clients: input is committed only past what was
forwarded, a failed batch is read again, a dead loop stops the worker, and stopping is prompt."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from meterwatch.config import ProcessingGuarantee, Settings
from meterwatch.models.internal import EVENT_ID
from meterwatch.streams.metrics import Metrics
from meterwatch.streams.pipeline import ingest, ingest_kafka
from meterwatch.streams.topics import TopicNames

from tests.support.messages import event

TOPIC = "usage.events"


class FakeConsumer:
    """One partition per entry of ``logs``; fetches from the position, commits what it is told."""

    def __init__(self, logs: dict[int, list[bytes]]) -> None:
        self.logs = logs
        self.positions = {TopicPartition(TOPIC, p): 0 for p in logs}
        self.committed: dict[TopicPartition, int] = {}
        self.listener: Any = None
        self.fail_getmany: BaseException | None = None
        self.stopped = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def start(self) -> None:
        await self.listener.on_partitions_revoked(set())
        await self.listener.on_partitions_assigned(set(self.positions))

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self.positions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.logs[tp.partition])

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict:
        if self.fail_getmany is not None:
            raise self.fail_getmany
        await asyncio.sleep(0.001)
        out = {}
        for tp, position in self.positions.items():
            values = self.logs[tp.partition][position : position + 3]
            if values:
                out[tp] = [
                    ConsumerRecord(
                        TOPIC, tp.partition, position + i, 1_764_000_000_000, 0, b"k", v, None, 1, len(v), ()
                    )
                    for i, v in enumerate(values)
                ]
                self.positions[tp] = position + len(values)
        return out

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)

    async def stop(self) -> None:
        self.stopped = True


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []
        self.failures = 0  # sends still to fail
        self.hang_on_stop = False

    async def send(self, topic: str, value: bytes, key: Any = None, partition: Any = None) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(RuntimeError("broker said no"))
        else:
            self.sent.append((topic, value, key))
            future.set_result(None)
        return future

    async def stop(self) -> None:
        if self.hang_on_stop:
            await asyncio.sleep(3600)


def good(workspace: str, event_id: str) -> bytes:
    return orjson.dumps(event(workspace, event_id=event_id))


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Any:
    def build(logs: dict[int, list[bytes]]) -> Any:
        settings = Settings(topic_prefix="", app_id="mw", partitions=4)
        crashes: list[BaseException] = []

        async def crash(error: BaseException) -> None:
            crashes.append(error)

        mw = types.SimpleNamespace(
            settings=settings,
            bootstrap="unused:9092",
            guarantee=ProcessingGuarantee.AT_LEAST_ONCE,
            names=TopicNames.for_settings(settings),
            metrics=Metrics(),
            app=types.SimpleNamespace(crash=crash),
        )
        consumer = FakeConsumer(logs)
        producer = FakeProducer()

        async def new_producer(mw: Any, *, transactional: bool) -> FakeProducer:
            return producer

        async def start_positions(mw: Any, consumer: FakeConsumer, group: str, assigned: set) -> dict:
            return {(tp.topic, tp.partition): consumer.committed.get(tp, 0) for tp in assigned}

        monkeypatch.setattr(ingest, "new_producer", new_producer)
        monkeypatch.setattr(ingest, "new_consumer", lambda mw, group, isolation_committed: consumer)
        monkeypatch.setattr(ingest, "start_positions", start_positions)
        monkeypatch.setattr(ingest, "RETRY_FIRST_SECONDS", 0.01)
        service = ingest.IngestService(mw)
        return types.SimpleNamespace(service=service, consumer=consumer, producer=producer, crashes=crashes, mw=mw)

    return build


def forwarded_ids(producer: FakeProducer) -> list[str]:
    ids = []
    for topic, value, _ in producer.sent:
        if topic.endswith("workspace-inbox"):
            ids.extend(row[EVENT_ID] for row in orjson.loads(value)["rows"])
    return ids


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.005)


async def test_offsets_are_committed_once_everything_is_forwarded(harness: Any) -> None:
    h = harness({0: [good("ws-a", f"a{i}") for i in range(7)], 1: [b"{bad", good("ws-b", "b0")]})
    await h.service.start()
    try:
        await until(lambda: h.consumer.committed == {TopicPartition(TOPIC, 0): 7, TopicPartition(TOPIC, 1): 2})
        await until(lambda: h.service.lag() == {(TOPIC, 0): 0, (TOPIC, 1): 0})
        assert ingest.consumer_lag(h.mw) == {(TOPIC, 0): 0, (TOPIC, 1): 0}
    finally:
        await h.service.stop()
    assert h.mw.metrics.batch_size.labels("ingest")._sum.get() == 9  # messages, observed once per batch
    assert sorted(forwarded_ids(h.producer)) == sorted([f"a{i}" for i in range(7)] + ["b0"])
    letters = [orjson.loads(v) for t, v, _ in h.producer.sent if t.endswith("dead-letter")]
    assert [letter["error"]["code"] for letter in letters] == ["invalid_json"]
    assert h.mw.metrics.events_rejected.labels("invalid_json")._value.get() == 1
    assert not h.crashes


async def test_a_failed_send_commits_nothing_and_the_batch_is_read_again(harness: Any) -> None:
    h = harness({0: [good("ws-a", f"a{i}") for i in range(3)]})
    h.producer.failures = 2
    commits: list[dict] = []
    real_commit = h.consumer.commit

    async def commit(offsets: dict) -> None:
        commits.append(dict(offsets))
        await real_commit(offsets)

    h.consumer.commit = commit
    await h.service.start()
    try:
        await until(lambda: h.consumer.committed.get(TopicPartition(TOPIC, 0)) == 3)
    finally:
        await h.service.stop()
    # Nothing was committed while the sends failed, and every event got through in the end.
    assert commits == [{TopicPartition(TOPIC, 0): 3}]
    assert sorted(set(forwarded_ids(h.producer))) == ["a0", "a1", "a2"]


async def test_a_dead_loop_stops_the_worker(harness: Any) -> None:
    h = harness({0: []})
    h.consumer.fail_getmany = KeyError("unforeseen")
    await h.service.start()
    try:
        await until(lambda: h.crashes)
    finally:
        await h.service.stop()
    assert isinstance(h.crashes[0], KeyError)


async def test_stopping_is_prompt_even_when_the_broker_is_gone(harness: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "CLOSE_SECONDS", 0.2)
    h = harness({0: [good("ws-a", "a0")]})
    h.producer.hang_on_stop = True
    await h.service.start()
    await until(lambda: h.consumer.committed)
    started = asyncio.get_running_loop().time()
    await h.service.stop()
    assert asyncio.get_running_loop().time() - started < 2.0
    assert h.consumer.stopped


async def test_records_read_before_the_partitions_are_placed_are_dropped(harness: Any) -> None:
    h = harness({0: [good("ws-a", f"a{i}") for i in range(3)]})
    service = h.service
    service._consumer = h.consumer
    service._placing = True
    assert await service._next_batch() is None  # read from a position not chosen yet
    h.consumer.positions[TopicPartition(TOPIC, 0)] = 0
    service.placed({(TOPIC, 0): 0})
    batch = await service._next_batch()
    assert batch is not None and batch.first_offsets == {(TOPIC, 0): 0}


def test_the_transactional_id_is_stable_per_worker() -> None:
    a = Settings(app_id="mw", web_host="10.0.0.1", web_port=6066)
    b = Settings(app_id="mw", web_host="10.0.0.2", web_port=6066)
    assert ingest_kafka.transactional_id(a) == ingest_kafka.transactional_id(a)
    assert ingest_kafka.transactional_id(a) != ingest_kafka.transactional_id(b)
    assert ingest_kafka.ingest_group(a) == "mw-ingest"


async def test_a_batch_read_across_a_rebalance_is_read_again_not_lost(harness: Any) -> None:
    h = harness({0: [good("ws-a", f"a{i}") for i in range(6)]})
    real_getmany = h.consumer.getmany
    rebalanced = []

    async def getmany(timeout_ms: int = 0, max_records: int | None = None) -> dict:
        fetched = await real_getmany(timeout_ms, max_records)
        if fetched and not rebalanced:
            # The partitions are placed again while this fetch was under way.
            rebalanced.append(True)
            h.service.placed({})
        return fetched

    h.consumer.getmany = getmany
    await h.service.start()
    try:
        await until(lambda: h.consumer.committed.get(TopicPartition(TOPIC, 0)) == 6)
    finally:
        await h.service.stop()
    assert rebalanced
    assert sorted(forwarded_ids(h.producer)) == [f"a{i}" for i in range(6)]
