"""A worker fenced off by another gives up its work in hand and rebuilds its tables, instead of
exiting (streams/runtime/fencing.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError, ProducerFenced, UnknownError
from faust.streams import current_event
from faust.types import TP
from meterwatch.config import ProcessingGuarantee, load_settings
from meterwatch.streams.app import create_app
from meterwatch.streams.runtime.commit_gate import CommitGate
from meterwatch.streams.runtime.fencing import forget_local_state
from meterwatch.streams.runtime.partition_context import acting_for
from meterwatch.streams.runtime.transactions import SourcePartitionTransactions

EVENTS_0, EVENTS_1 = TP("t.usage.events", 0), TP("t.usage.events", 1)


class FakeProducer:
    """Faust's producer as the commit uses it: one call for all transactional ids."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.commits: list[dict[str, dict[TP, int]]] = []

    async def commit_transactions(
        self, offsets: dict[str, dict[TP, int]], group_id: str, start_new_transaction: bool = True
    ) -> None:
        self.commits.append(offsets)
        if self.error is not None:
            raise self.error


def transactions(producer: FakeProducer) -> SourcePartitionTransactions:
    manager = SourcePartitionTransactions.__new__(SourcePartitionTransactions)
    manager.commit_gate = CommitGate()
    manager.producer = producer  # type: ignore[assignment]
    crashes: list[BaseException] = []

    async def crash(error: BaseException) -> None:
        crashes.append(error)

    manager.app = SimpleNamespace(  # type: ignore[assignment]
        conf=SimpleNamespace(id="t.app"),
        assignor=SimpleNamespace(group_for_topic=lambda topic: 0),
        crash=crash,
        crashes=crashes,
    )
    return manager


async def test_a_commit_goes_by_the_source_partitions_transactional_ids() -> None:
    producer = FakeProducer()
    manager = transactions(producer)
    assert await manager.commit({EVENTS_0: 10, EVENTS_1: 4})
    assert producer.commits == [{"t.app-0-0": {EVENTS_0: 10}, "t.app-0-1": {EVENTS_1: 4}}]


def _raced_a_fence() -> KafkaError:
    """What aiokafka raises when the coordinator answers EndTxn with UNKNOWN_SERVER_ERROR, as
    Apache Kafka does while a new owner's InitProducerId is fencing the transactional id."""
    raced = KafkaError("Unexpected error during batch delivery")
    raced.__cause__ = UnknownError()
    return raced


@pytest.mark.parametrize("error", [ProducerFenced(), _raced_a_fence()], ids=["fenced", "raced_a_fence"])
async def test_a_fenced_commit_shuts_the_gate_instead_of_crashing_the_worker(error: BaseException) -> None:
    producer = FakeProducer(error)
    manager = transactions(producer)
    asked: list[str] = []
    manager.commit_gate.on_lost = lambda: asked.append("rejoin")

    assert not await manager.commit({EVENTS_0: 10})
    assert manager.commit_gate.lost
    assert asked == ["rejoin"]
    assert manager.app.crashes == []  # type: ignore[attr-defined]
    # Until the tables are rebuilt nothing more is committed: the producer would refuse anyway.
    assert not await manager.commit({EVENTS_0: 12})
    assert len(producer.commits) == 1


async def test_other_commit_failures_are_not_taken_for_a_fence() -> None:
    manager = transactions(FakeProducer(KafkaTimeoutError()))
    with pytest.raises(KafkaTimeoutError):
        await manager.commit({EVENTS_0: 10})
    assert not manager.commit_gate.shut


def build() -> Any:
    asyncio.set_event_loop(asyncio.new_event_loop())
    return create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee.EXACTLY_ONCE)


def test_forgetting_local_state_empties_the_memory_tables_and_rereads_every_changelog() -> None:
    mw = build()
    workspaces = mw.tables.workspaces.data
    workspaces.data["ws_1"] = b"state written by an aborted batch"
    workspaces._key_partition["ws_1"] = 2
    mw.tables.mails_sent.data.data["alert-1"] = b"sent"
    changelog = TP(mw.tables.workspaces.changelog_topic.get_topic_name(), 2)
    recovery = mw.app.tables.recovery
    recovery.active_offsets.update(Counter({changelog: 417}))
    recovery.standby_offsets.update(Counter({changelog: 9}))

    forget_local_state(mw)

    assert dict(workspaces.data) == {} and dict(workspaces._key_partition) == {}
    assert dict(mw.tables.mails_sent.data.data) == {}
    # With no offset recorded, recovery reads the changelog from its start (streams/runtime/recovery.py).
    assert recovery.active_offsets == Counter() and recovery.standby_offsets == Counter()


async def test_a_table_write_refused_before_it_reaches_the_producer_fails_instead_of_hanging() -> None:
    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee.EXACTLY_ONCE)
    table = mw.tables.workspaces

    async def refuse(message: Any) -> None:
        raise ProducerFenced()

    table.changelog_topic.publish_message = refuse
    table.send_changelog(0, b"ws_1", b"value")
    async with asyncio.timeout(1):
        with pytest.raises(ProducerFenced):
            await table.wait_for_writes()


async def test_writes_still_awaited_when_the_transaction_is_lost_are_dropped() -> None:
    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee.EXACTLY_ONCE)
    table = mw.tables.workspaces
    never_answered = asyncio.Event()

    async def hang(message: Any) -> None:
        await never_answered.wait()

    table.changelog_topic.publish_message = hang
    table.send_changelog(0, b"ws_1", b"value")
    table.forget_unacknowledged()
    async with asyncio.timeout(1):
        await table.wait_for_writes()  # nothing left to wait for


async def test_the_writes_of_a_batch_are_published_in_order_by_one_task_per_source_partition() -> None:
    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee.EXACTLY_ONCE)
    table = mw.tables.workspaces
    published: list[tuple[Any, int | None]] = []

    async def publish(message: Any) -> None:
        await asyncio.sleep(0)  # the producer yields: later writes queue up meanwhile
        event = current_event()
        published.append((message.message.value, event.message.partition if event else None))
        message.set_result(None)

    table.changelog_topic.publish_message = publish
    tasks_before = len(asyncio.all_tasks())
    events = [_Event(SimpleNamespace(topic="inbox", partition=p)) for p in (3, 5)]  # held, as a batch holds them
    with acting_for(events[0]):
        for n in range(50):
            table.send_changelog(3, b"ws_1", b"v%d" % n)
    with acting_for(events[1]):
        table.send_changelog(5, b"ws_2", b"w")
    assert len(asyncio.all_tasks()) - tasks_before == 2
    async with asyncio.timeout(1):
        await table.wait_for_writes()
    # Each sent acting for the source partition it was written for, in the order written there.
    assert [value for value, source in published if source == 3] == [b"v%d" % n for n in range(50)]
    assert [value for value, source in published if source == 5] == [b"w"]
    assert len(published) == 51


class _Event:
    """An event of one source partition, as ``acting_for`` names it (weakly referenced)."""

    def __init__(self, message: SimpleNamespace) -> None:
        self.message = message


class _RecordingProducer:
    """An aiokafka producer as ``put_many`` uses it: record batches handed over whole."""

    def __init__(self, *, transactional_id: str | None = None, error: BaseException | None = None) -> None:
        self._txn_manager = SimpleNamespace(transactional_id=transactional_id) if transactional_id else None
        self.error = error
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> asyncio.Future[None]:
        if self.error is not None:
            raise self.error
        from aiokafka.record.default_records import DefaultRecordBatch

        batch.close()
        records = DefaultRecordBatch(bytearray(batch._build()))  # the bytes the broker would get
        self.sent.append((topic, partition, [(r.key, r.value) for r in records]))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _with_producer(mw: Any, producer: _RecordingProducer, guarantee: ProcessingGuarantee) -> None:
    if guarantee is ProcessingGuarantee.EXACTLY_ONCE:
        mw.app.assignor._topic_groups[mw.tables.workspaces.changelog_topic.get_topic_name()] = 1  # as assigned
        tid = f"{mw.app.conf.id}-1-3"
        mw.app.producer._transaction_producers[tid] = producer
        mw.app.producer._trn_locks[tid] = asyncio.Lock()
        mw.app.__dict__["in_transaction"] = True  # as in a worker
    else:
        mw.app.producer._ensure_producer = lambda: producer


@pytest.mark.parametrize("guarantee", [ProcessingGuarantee.AT_LEAST_ONCE, ProcessingGuarantee.EXACTLY_ONCE])
async def test_put_many_writes_the_store_and_sends_the_records_faust_would(guarantee: ProcessingGuarantee) -> None:
    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", guarantee)
    table = mw.tables.workspaces
    producer = _RecordingProducer(transactional_id="t" if guarantee is ProcessingGuarantee.EXACTLY_ONCE else None)
    _with_producer(mw, producer, guarantee)
    keys = ["ws_1", 'ws_"\u00e9\U0001f600', "ws_3"]
    table.put_many(3, [(key, b"value of " + key.encode()) for key in keys])
    table.put_many(3, [("ws_1", b"later value")])
    async with asyncio.timeout(1):
        await table.wait_for_writes()

    assert table.data["ws_1"] == b"later value" and table.data["ws_3"] == b"value of ws_3"
    topic = table.changelog_topic.get_topic_name()
    own_key = table.changelog_topic.prepare_key
    # Each call's records on the changelog partition of the source partition, in order, keyed
    # exactly as Faust keys a table write.
    assert producer.sent == [
        (topic, 3, [(own_key(key, table.key_serializer)[0], b"value of " + key.encode()) for key in keys]),
        (topic, 3, [(own_key("ws_1", table.key_serializer)[0], b"later value")]),
    ]


async def test_put_many_splits_records_into_batches_the_broker_accepts() -> None:
    from meterwatch.streams.runtime.durable_table import CHANGELOG_BATCH_BYTES

    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee.AT_LEAST_ONCE)
    table = mw.tables.workspaces
    producer = _RecordingProducer()
    _with_producer(mw, producer, ProcessingGuarantee.AT_LEAST_ONCE)
    value = b"x" * 10_000
    table.put_many(3, [(f"ws_{n}", value) for n in range(200)])  # about 2 MB in all
    async with asyncio.timeout(1):
        await table.wait_for_writes()
    assert len(producer.sent) > 1
    assert all(sum(len(k) + len(v) for k, v in records) <= CHANGELOG_BATCH_BYTES for _, _, records in producer.sent)
    assert [k for _, _, records in producer.sent for k, _ in records] == [b'"ws_%d"' % n for n in range(200)]


async def test_put_many_refused_by_a_fenced_producer_fails_at_wait_for_writes() -> None:
    from meterwatch.streams.runtime.fencing import is_lost_transaction

    mw = create_app(load_settings({"METERWATCH_AUTH": "off"}), "127.0.0.1:9092", ProcessingGuarantee.EXACTLY_ONCE)
    table = mw.tables.workspaces
    _with_producer(
        mw, _RecordingProducer(transactional_id="t", error=ProducerFenced()), ProcessingGuarantee.EXACTLY_ONCE
    )
    table.put_many(3, [("ws_1", b"v")])
    async with asyncio.timeout(1):
        with pytest.raises(ProducerFenced):
            await table.wait_for_writes()
    # A partition whose transactional producer is gone: Faust's own words, a lost transaction.
    table.put_many(4, [("ws_2", b"v")])
    async with asyncio.timeout(1):
        with pytest.raises(Exception) as raised:
            await table.wait_for_writes()
    assert is_lost_transaction(raised.value)
