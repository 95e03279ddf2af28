"""What one ingest batch produces, decided without I/O: inbox records per partition, dead letters,
rejection counts, and the input offsets that become safe to commit once all of it is acknowledged.

Each source message is decoded by the fast path (models/usage_event.py); anything it declines is
read by ``parse_usage_message``, so dead letters keep their exact codes and messages.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from ...core.rejections import RejectCode
from ...models.common import dumps
from ...models.internal import RowPacker
from ...models.outputs import dead_letter
from ...models.usage_event import Row, fast_rows, parse_usage_message

log = logging.getLogger("meterwatch.streams.pipeline.ingest")

STAGE = "ingest"


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
            self._batch.rejected[rejection.code] += 1
            letter = dead_letter(
                source_topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=rejection.value if rejection.value is not None else record.value,
                code=rejection.code,
                message=rejection.message,
                at=self._now,
            )
            key = rejection.workspace_id.encode() if rejection.workspace_id is not None else None
            self._batch.dead_letters.append((key, dumps(letter)))
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
        self._batch.rejected[RejectCode.INTERNAL_ERROR] += 1
        letter = dead_letter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            code=RejectCode.INTERNAL_ERROR,
            message=f"{STAGE} failed on this input ({type(error).__name__}); see the worker log",
            at=self._now,
        )
        self._batch.dead_letters.append((None, dumps(letter)))


def take_batch(
    pending: Any, partitioner: InboxPartitioner, now: datetime, max_events: int, max_messages: int
) -> IngestBatch:
    """Take messages from the front of ``pending`` (a deque) until ``max_events`` events or
    ``max_messages`` messages are in the batch; the rest stay for the next batch. A message is
    never split: one batch message of 1,000 events goes in whole."""
    builder = BatchBuilder(partitioner, now)
    builder.take(pending, max_events, max_messages)
    return builder.build()
