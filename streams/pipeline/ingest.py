"""Stage one: read ``usage.events``, dead-letter what cannot be accepted, and forward the rest to
the workspace inbox, on the partition that owns each workspace, so that mis-keyed messages are
still counted there.

This stage runs beside Faust rather than inside it: a service of the app owning a plain aiokafka
consumer (its own group, ``{group}-ingest``: Faust's group uses Faust's assignor) and producer.
Faust's per-message cost capped stage one far below what the broker delivers; here a message
costs its decoding (the fast path of models/usage_event.py) and a share of a packed inbox
record (models/internal.py).

What a batch produces is decided without I/O (``BatchBuilder``, the second half of this module):
anything the fast path declines is read by ``parse_usage_message``, so dead letters keep their
exact codes and messages.

A batch is forwarded, every record acknowledged, and only then are its input offsets committed:
in one transaction with its outputs under ``exactly_once``, after the acknowledgements under
``at_least_once``. A batch that fails is read again from its first offsets; forwarding an event
twice is harmless, counting remembers event ids. A loop that dies of an unforeseen error crashes
the worker, so that it exits non-zero rather than report health while nothing is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.partitioner import murmur2
from mode import Service

from ...config import ProcessingGuarantee
from ...core.rejections import RejectCode
from ...logs import FAUST_SERVICES_LOG
from ...models.common import dumps
from ...models.internal import RowPacker
from ...models.outputs import dead_letter
from ...models.usage_event import Row, fast_rows, parse_usage_message
from ...sinks.outputs import retrieve_exception
from ..runtime.kafka_client import close_quietly
from ..runtime.rebalance_log import log_ingest_assigned, log_ingest_revoked
from .ingest_kafka import (
    CLOSE_SECONDS,
    ingest_group,
    new_consumer,
    new_producer,
    start_positions,
)

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

STAGE = "ingest"

# An alert must be out within a second of its event: a batch is a few thousand events at most,
# and getmany returns as soon as anything is there.
BATCH_EVENTS = 4000
FETCH_MESSAGES = 4000
FETCH_WAIT_MS = 100
YIELD_EVERY = 500
# How long one batch's forwarding may take before it is given up and read again.
DELIVERY_SECONDS = 30.0
# A batch in hand when the service stops, or when its partitions are being taken away, may
# finish within this; after it, it is abandoned uncommitted.
FINISH_SECONDS = 5.0
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0

# Stage one of each app: an IngestService, or the IngestProcess that runs one.
_SERVICES: dict[int, Any] = {}


def register(mw: Meterwatch) -> None:
    """Start stage one with the app and stop it with the app: in a process of its own
    (streams/pipeline/ingest_process.py) unless ``METERWATCH_INGEST_PROCESS=false``."""
    if mw.settings.ingest_process:
        from .ingest_process import IngestProcess as Stage
    else:
        Stage = IngestService  # noqa: N806

    def __init__(self: Any, **kwargs: Any) -> None:
        Stage.__init__(self, mw, **kwargs)

    # Named as the stage it runs: a stop that gives up names the services still stopping.
    mw.app.service(type(Stage.__name__, (Stage,), {"__init__": __init__}))


def register_service(mw: Meterwatch, service: Any) -> None:
    """``service`` is stage one of ``mw``: it answers ``is_reading`` and ``consumer_lag``."""
    _SERVICES[id(mw.app)] = service


def forget_service(mw: Meterwatch) -> None:
    _SERVICES.pop(id(mw.app), None)


def is_reading(mw: Meterwatch) -> bool:
    """Whether stage one has joined its group and placed what it was given (which may be
    nothing, with more workers than ``usage.events`` partitions)."""
    service = _SERVICES.get(id(mw.app))
    return service is not None and service.joined


def consumer_lag(mw: Meterwatch) -> dict[tuple[str, int], int]:
    """Messages behind the end of each ``usage.events`` partition the ingest consumer holds."""
    service = _SERVICES.get(id(mw.app))
    return service.lag() if service is not None else {}


class IngestService(Service):
    # Its Starting.../Stopping... lines join those of Faust's services; ingest says what matters.
    logger = FAUST_SERVICES_LOG

    def __init__(self, mw: Meterwatch, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._mw = mw
        self._group = ingest_group(mw.settings)
        self._transactional = mw.guarantee is ProcessingGuarantee.EXACTLY_ONCE
        self._partitioner = InboxPartitioner(mw.settings.partitions)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pending: deque[Any] = deque()
        self._in_flight: _InFlight | None = None
        # Counts rebalances: a batch built under an earlier count is not sent.
        self._generation = 0
        # From a rebalance's start until the listener has placed every assigned partition,
        # whatever getmany returns was read from positions not chosen yet: it is dropped.
        self._placing = True
        # Set once the first assignment is placed: until then the worker is not consuming.
        self.joined = False
        self._done = asyncio.Event()
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._failures = 0
        # An error the rebalance listener met, raised by the loop (aiokafka swallows a listener's).
        self._fatal: BaseException | None = None
        register_service(mw, self)

    @Service.task
    async def _run(self) -> None:
        try:
            await self._open()
            await self._ingest()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self.should_stop:
                log.warning("ingest: stopped with %s: %s", type(error).__name__, error)
                return
            log.critical(
                "ingest: the loop reading %s failed (%s: %s); stopping the worker, nothing more is committed",
                self._mw.names.usage_events,
                type(error).__name__,
                error,
                exc_info=error,
            )
            await self._mw.app.crash(error)
        finally:
            self._done.set()

    async def on_stop(self) -> None:
        # The loop sees should_stop after its batch in hand; give that batch its chance to finish.
        try:
            await asyncio.wait_for(self._done.wait(), FINISH_SECONDS + FETCH_WAIT_MS / 1000)
        except TimeoutError:
            log.warning(
                "ingest: did not finish within %.0fs; the batch in hand is abandoned, uncommitted", FINISH_SECONDS
            )
        await self._close()
        forget_service(self._mw)

    async def _open(self) -> None:
        mw = self._mw
        self._producer = await new_producer(mw, transactional=self._transactional)
        self._consumer = new_consumer(mw, self._group, isolation_committed=self._transactional)
        self._consumer.subscribe([mw.names.usage_events], listener=_Rebalance(self))
        await self._consumer.start()
        log.info("ingest: reading %s as group %s (%s)", mw.names.usage_events, self._group, self._mw.guarantee.value)

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await close_quietly("ingest consumer", consumer.stop(), CLOSE_SECONDS)
        if producer is not None:
            await close_quietly("ingest producer", producer.stop(), CLOSE_SECONDS)

    async def _ingest(self) -> None:
        """One batch is delivered (sent, acknowledged, committed) while the next one is decoded:
        the broker's round trips overlap the work, and commits stay in order."""
        while not self.should_stop:
            generation = self._generation
            started = time.perf_counter()
            batch = await self._next_batch()
            if self._in_flight is not None and not await self._settle(also=batch):
                await self.sleep(min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(self._failures - 1, 10)))
                continue
            if batch is None:
                self._sample_lag()
                continue
            if generation != self._generation:
                # Read across a rebalance: not sent, read again from where its partitions are now.
                self._read_again([batch])
                continue
            delivery = asyncio.ensure_future(self._deliver(batch))
            # Its error is raised to whoever awaits it; one abandoned at shutdown is no news.
            delivery.add_done_callback(retrieve_exception)
            self._in_flight = _InFlight(batch, delivery, started)
        if self._in_flight is not None:
            await self._settle(also=None)

    async def _next_batch(self) -> IngestBatch | None:
        consumer = self._consumer
        assert consumer is not None
        if not self._pending:
            # With a delivery in flight, only what is already fetched: the delivery is settled next.
            wait_ms = 0 if self._in_flight is not None else FETCH_WAIT_MS
            fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=FETCH_MESSAGES)
            if self._fatal is not None:
                raise self._fatal
            if self._placing:
                return None
            for records in fetched.values():
                self._pending.extend(records)
            if not self._pending:
                return None
        builder = BatchBuilder(self._partitioner, datetime.now(UTC))
        while True:
            builder.take(self._pending, BATCH_EVENTS, min(builder.messages + YIELD_EVERY, FETCH_MESSAGES))
            if not self._pending or builder.events >= BATCH_EVENTS or builder.messages >= FETCH_MESSAGES:
                return builder.build()
            # Decoding is CPU work: between slices the delivery in flight gets its acknowledgements
            # and round trips through, instead of waiting for the whole batch to be decoded.
            await asyncio.sleep(0)

    async def _settle(self, also: IngestBatch | None) -> bool:
        """Wait for the delivery in flight. If it failed, nothing of it was committed: read it
        again, with ``also`` (the next batch, built meanwhile) and what is pending."""
        flight = self._in_flight
        assert flight is not None
        try:
            await flight.delivery
        except Exception as error:
            self._in_flight = None
            self._failures += 1
            batch = flight.batch
            log.warning(
                "ingest: could not forward %d messages (%d events) from %s (%s: %s); nothing committed, "
                "reading them again (attempt %d)",
                batch.messages,
                batch.events,
                ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(batch.first_offsets.items())),
                type(error).__name__,
                error,
                self._failures,
            )
            if self._transactional:
                await self._abort()
            self._read_again([batch] if also is None else [batch, also])
            return False
        self._in_flight = None
        self._failures = 0
        batch = flight.batch
        self._next_offsets.update(batch.next_offsets)
        metrics = self._mw.metrics
        for code, count in batch.rejected.items():
            metrics.events_rejected.labels(code).inc(count)
        metrics.batch_size.labels("ingest").observe(batch.messages)
        metrics.batch_seconds.labels("ingest").observe(time.perf_counter() - flight.started)
        self._sample_lag()
        return True

    async def _deliver(self, batch: IngestBatch) -> None:
        """Forward the batch and commit its offsets, all or (for the input) nothing."""
        offsets = {
            TopicPartition(topic, partition): offset for (topic, partition), offset in batch.next_offsets.items()
        }
        if self._transactional:
            await asyncio.wait_for(self._send_in_transaction(batch, offsets), DELIVERY_SECONDS)
        else:
            await asyncio.wait_for(self._send_then_commit(batch, offsets), DELIVERY_SECONDS)

    async def _send_all(self, batch: IngestBatch) -> None:
        producer = self._producer
        assert producer is not None
        inbox = self._mw.names.workspace_inbox
        dead_letter = self._mw.names.dead_letter
        futures = [await producer.send(inbox, record, partition=partition) for partition, record in batch.inbox]
        for key, record in batch.dead_letters:
            futures.append(await producer.send(dead_letter, record, key=key))
        if futures:
            await asyncio.gather(*futures)

    async def _send_then_commit(self, batch: IngestBatch, offsets: dict[TopicPartition, int]) -> None:
        await self._send_all(batch)
        assert self._consumer is not None
        await self._consumer.commit(offsets)

    async def _send_in_transaction(self, batch: IngestBatch, offsets: dict[TopicPartition, int]) -> None:
        producer = self._producer
        assert producer is not None
        await producer.begin_transaction()
        await self._send_all(batch)
        await producer.send_offsets_to_transaction(offsets, self._group)
        await producer.commit_transaction()

    async def _abort(self) -> None:
        """Abort the open transaction; a producer that cannot abort (fenced, or its broker gone)
        is replaced, which also ends its transaction on the broker."""
        producer = self._producer
        assert producer is not None
        try:
            await asyncio.wait_for(producer.abort_transaction(), CLOSE_SECONDS)
            return
        except Exception as error:
            log.warning("ingest: could not abort the transaction (%s); starting a new producer", type(error).__name__)
        self._producer = None
        await close_quietly("ingest producer", producer.stop(), CLOSE_SECONDS)
        self._producer = await new_producer(self._mw, transactional=True)

    def _read_again(self, batches: list[IngestBatch]) -> None:
        """Seek every partition of ``batches`` (and of messages still pending) back to its first
        offset not committed, so the next batches read them again in order."""
        consumer = self._consumer
        assert consumer is not None
        first: dict[tuple[str, int], int] = {}
        for batch in batches:
            for where, offset in batch.first_offsets.items():
                first.setdefault(where, offset)
        for record in self._pending:
            first.setdefault((record.topic, record.partition), record.offset)
        self._pending.clear()
        held = consumer.assignment()
        for (topic, partition), offset in first.items():
            tp = TopicPartition(topic, partition)
            if tp in held:
                consumer.seek(tp, offset)

    def forget_pending(self) -> None:
        """Messages fetched but not taken yet are read again from the committed offsets."""
        self._pending.clear()

    async def before_handover(self, timeout: float) -> bool:
        """Called as partitions are taken away: batches built from now on are not sent, and the
        delivery in flight may finish (commit while its partitions are still ours)."""
        self._generation += 1
        self._placing = True
        flight = self._in_flight
        if flight is None:
            return True
        done, _ = await asyncio.wait([flight.delivery], timeout=timeout)
        return bool(done)

    def placed(self, positions: dict[tuple[str, int], int]) -> None:
        """Every assigned partition is sought to where it is read from: reading may resume."""
        self._next_offsets.update(positions)
        self._pending.clear()
        self._generation += 1
        self._placing = False
        self.joined = True

    def fail(self, error: BaseException) -> None:
        self._fatal = error

    def _sample_lag(self) -> None:
        lag = self.lag()
        gauge = self._mw.metrics.consumer_lag
        for (topic, partition), behind in lag.items():
            gauge.labels(topic, str(partition)).set(behind)

    def lag(self) -> dict[tuple[str, int], int]:
        consumer = self._consumer
        if consumer is None:
            return {}
        lag: dict[tuple[str, int], int] = {}
        try:
            held = consumer.assignment()
        except Exception:  # not started yet, or closing
            return {}
        for tp in held:
            highwater = consumer.highwater(tp)
            position = self._next_offsets.get((tp.topic, tp.partition))
            if highwater is not None and position is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - position)
        return lag


@dataclass(slots=True)
class _InFlight:
    batch: IngestBatch
    delivery: asyncio.Future[None]
    started: float


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: IngestService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        log_ingest_revoked(self._service._group, revoked)  # noqa: SLF001
        # The batch in hand commits while its partitions are still ours, so the next owner
        # does not forward it again; what was fetched and not taken is read again by whoever
        # gets the partition.
        if not await self._service.before_handover(FINISH_SECONDS):
            log.warning("ingest: giving up partitions with a batch in hand; their next owner reads it again")
        self._service.forget_pending()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        service = self._service
        consumer = service._consumer  # noqa: SLF001 - the listener is the service's own
        if consumer is None:
            return
        try:
            positions = await start_positions(service._mw, consumer, service._group, set(assigned))  # noqa: SLF001
        except Exception as error:
            service.fail(error)
            return
        service.placed(positions)
        log_ingest_assigned(service._group, assigned)  # noqa: SLF001


# ---------------------------------------------------------------------------------------------
# What one batch produces, decided without I/O: inbox records per partition, dead letters,
# rejection counts, and the input offsets that become safe to commit once all of it is
# acknowledged.


class SourceRecord(Protocol):
    """The fields of an aiokafka ``ConsumerRecord`` that ingest reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int


class InboxPartitioner:
    """The inbox partition of a workspace: the one aiokafka's default partitioner (murmur2, as the
    Java client) picks for a record keyed by the raw UTF-8 ``workspace_id``, which is where Faust's
    own sends put it and where the workspace's table rows live."""

    __slots__ = ("_partitions", "_known")
    _MAX_KNOWN = 100_000

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions
        self._known: dict[str, int] = {}

    def __call__(self, workspace_id: str) -> int:
        partition = self._known.get(workspace_id)
        if partition is None:
            # murmur2 is pure Python: hashing each workspace once keeps it off the per-event path.
            partition = (murmur2(workspace_id.encode()) & 0x7FFFFFFF) % self._partitions
            if len(self._known) >= self._MAX_KNOWN:
                self._known.clear()
            self._known[workspace_id] = partition
        return partition


@dataclass
class IngestBatch:
    """Outputs of a run of source messages, in their order within each source partition."""

    inbox: list[tuple[int, bytes]] = field(default_factory=list)  # (inbox partition, record)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (key, record)
    rejected: Counter[str] = field(default_factory=Counter)
    # (topic, partition) -> the offset after the last message taken: what is committed for it.
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    # (topic, partition) -> the first offset taken: where to read again if the batch fails.
    first_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    messages: int = 0
    events: int = 0


class BatchBuilder:
    """``add`` source messages one by one (each partition's in offset order), then ``build``."""

    def __init__(self, partitioner: InboxPartitioner, now: datetime) -> None:
        self._partition_of = partitioner
        self._now = now
        self._packers: dict[int, RowPacker] = {}
        self._batch = IngestBatch()
        # The source partition of the current run of messages and the offset after its last one:
        # written to next_offsets when the run ends, not once per message.
        self._run: tuple[str, int] | None = None
        self._run_next = 0

    @property
    def events(self) -> int:
        return self._batch.events

    @property
    def messages(self) -> int:
        return self._batch.messages

    def take(self, pending: Any, max_events: int, max_messages: int) -> None:
        """``add`` messages from the front of ``pending`` (a deque) until the batch holds
        ``max_events`` events or ``max_messages`` messages, or ``pending`` is empty. A message is
        never split: one batch message of 1,000 events goes in whole.

        The common message (one plainly valid event) is handled inline: this loop runs once per
        message at the stage's full rate, and every call it saves shows in its throughput."""
        batch = self._batch
        popleft = pending.popleft
        packers = self._packers
        partition_of = self._partition_of
        while pending and batch.events < max_events and batch.messages < max_messages:
            run = self._run
            # Counted here and written back below: the inline loop keeps its counters local.
            messages = batch.messages
            limit = min(max_messages, messages + max_events - batch.events)
            taken = 0
            while pending and messages + taken < limit:
                record = pending[0]
                if run is None or run[1] != record.partition or run[0] != record.topic:
                    break
                rows = fast_rows(record.value)
                if rows is None or len(rows) != 1:
                    break
                popleft()
                taken += 1
                row = rows[0]
                partition = partition_of(row[0])
                packer = packers.get(partition)
                if packer is None:
                    packer = packers[partition] = RowPacker()
                packer.add_origin(record.topic, record.partition, record.offset, record.key, record.timestamp)
                packer.add_row(*row)
                self._run_next = record.offset + 1
            batch.messages += taken
            batch.events += taken
            if pending and taken == 0:
                self.add(popleft())

    def add(self, record: SourceRecord) -> None:
        batch = self._batch
        run = self._run
        if run is None or run[1] != record.partition or run[0] != record.topic:
            self._end_run()
            run = self._run = (record.topic, record.partition)
            batch.first_offsets.setdefault(run, record.offset)
        self._run_next = record.offset + 1
        batch.messages += 1
        rows = fast_rows(record.value)
        if rows is None:
            try:
                rows = self._slow(record)
            except Exception as error:  # what validation did not foresee: this message's, not the batch's
                self._internal_error(record, error)
                return
        if rows:
            self._forward(record, rows)

    def _end_run(self) -> None:
        if self._run is not None:
            self._batch.next_offsets[self._run] = self._run_next

    def build(self) -> IngestBatch:
        self._end_run()
        self._run = None
        batch = self._batch
        for partition, packer in self._packers.items():
            batch.inbox.extend((partition, record) for record in packer.records())
        self._packers = {}
        return batch

    def _forward(self, record: SourceRecord, rows: list[Row]) -> None:
        self._batch.events += len(rows)
        packers = self._packers
        partition_of = self._partition_of
        # The common message (one event) is packed inline by take(); this is every other one.
        started: set[int] = set()
        for row in rows:
            partition = partition_of(row[0])
            packer = packers.get(partition)
            if packer is None:
                packer = packers[partition] = RowPacker()
            if partition not in started:
                started.add(partition)
                packer.add_origin(record.topic, record.partition, record.offset, record.key, record.timestamp)
            packer.add_row(*row)

    def _slow(self, record: SourceRecord) -> list[Row]:
        accepted, rejections = parse_usage_message(record.value)
        for rejection in rejections:
            key = rejection.workspace_id.encode() if rejection.workspace_id is not None else None
            value = rejection.value if rejection.value is not None else record.value
            self._dead_letter(record, key, value, rejection.code, rejection.message)
        return [
            (e.workspace_id, e.event_id, e.metric.value, e.quantity, e.occurred_at.isoformat(), e.conversation_id)
            for e in accepted
        ]

    def _internal_error(self, record: SourceRecord, error: BaseException) -> None:
        log.error(
            "%s: could not handle %s[%d]@%d (%s); dead-lettered as %s",
            STAGE,
            record.topic,
            record.partition,
            record.offset,
            type(error).__name__,
            RejectCode.INTERNAL_ERROR,
            exc_info=error,
        )
        message = f"{STAGE} failed on this input ({type(error).__name__}); see the worker log"
        self._dead_letter(record, None, record.value, RejectCode.INTERNAL_ERROR, message)

    def _dead_letter(
        self, record: SourceRecord, kafka_key: bytes | None, value: bytes | None, code: str, message: str
    ) -> None:
        """A dead letter for ``record`` (or the one event ``value`` of it), under ``kafka_key``."""
        self._batch.rejected[code] += 1
        letter = dead_letter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=value,
            code=code,
            message=message,
            at=self._now,
        )
        self._batch.dead_letters.append((kafka_key, dumps(letter)))


def take_batch(
    pending: Any, partitioner: InboxPartitioner, now: datetime, max_events: int, max_messages: int
) -> IngestBatch:
    """Take messages from the front of ``pending`` (a deque) until ``max_events`` events or
    ``max_messages`` messages are in the batch; the rest stay for the next batch. A message is
    never split: one batch message of 1,000 events goes in whole."""
    builder = BatchBuilder(partitioner, now)
    builder.take(pending, max_events, max_messages)
    return builder.build()
