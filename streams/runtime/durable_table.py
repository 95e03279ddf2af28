"""A Faust table whose changelog writes are sent at once and can be awaited.

Faust queues table writes in a buffer that a background task drains, and its ``flush`` gives up
after 0.1 s with messages still queued, so an offset could be committed ahead of the state it
produced. Here each write is published from the writing task itself (so, under exactly_once, it
joins the transaction of the partition being processed) and its future is kept until
``wait_for_writes`` has seen the broker acknowledge it.

``put_many`` writes a batch's keys of one partition at once: into the store, and to the
changelog as record batches built here and handed to the partition's producer whole, so a key
costs its bytes rather than a message future, a send and Faust's bookkeeping each.

A value larger than ``VALUE_PART_BYTES`` (a workspace with tens of thousands of Fin
conversations in a period, a contract with thousands of members) goes to the changelog as
*parts*, each a record of its own under a fresh key, followed by a *head* under the value's own
key that names them; the parts of the value it replaces are deleted after it (tombstones), so
compaction keeps exactly the parts of each key's latest value. Recovery joins the parts again
before the store sees the head. No record nears the producer's and broker's 1 MB limits,
whatever a value's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import faust
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.types import EventT, FutureMessage

from ...logs import FAUST_SERVICES_LOG
from ...sinks.outputs import retrieve_exception

# A changelog record batch: well under the broker's default 1 MB message size.
CHANGELOG_BATCH_BYTES = 512 * 1024
# A value's largest record; a larger value is split into parts of this size (at most).
VALUE_PART_BYTES = 256 * 1024
# Table keys and values never start with a NUL (keys are identifiers, values JSON).
PART_KEY_PREFIX = "\x00part:"
HEAD_MARK = b"\x00parts\x00"
_PART_KEY_SEPARATOR = "\x1f"


class MissingValuePart(RuntimeError):
    """A head names a part its changelog did not hold before it."""


def split_value(value: bytes, part_bytes: int = VALUE_PART_BYTES) -> tuple[list[tuple[str, bytes]], bytes]:
    """``value`` as part records under fresh keys, and the head that names them in order."""
    version = uuid.uuid4().hex
    parts = [
        (f"{PART_KEY_PREFIX}{version}:{index}", value[start : start + part_bytes])
        for index, start in enumerate(range(0, len(value), part_bytes))
    ]
    return parts, HEAD_MARK + _PART_KEY_SEPARATOR.join(key for key, _ in parts).encode()


def part_keys(head: bytes) -> list[str]:
    return head[len(HEAD_MARK) :].decode().split(_PART_KEY_SEPARATOR)


def is_part_key(key: Any) -> bool:
    return isinstance(key, str) and key.startswith(PART_KEY_PREFIX)


@dataclass(frozen=True, slots=True)
class ChangelogRecord:
    """The fields of a changelog message that a store's ``apply_changelog_batch`` reads."""

    tp: Any
    partition: int
    offset: int
    key: bytes
    value: bytes | None


@dataclass(frozen=True, slots=True)
class _Joined:
    key: str
    value: bytes
    message: ChangelogRecord


class DurableTable(faust.Table):
    logger = FAUST_SERVICES_LOG
    # Whether recovery looks for split values (a table whose values are all small says no).
    joins_parts = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: list[FutureMessage] = []
        self._queued: dict[tuple[str, int] | None, list[FutureMessage]] = {}
        self._sending: dict[int, asyncio.Future[None]] = {}
        self._changelog_encoder: Callable[[str], bytes] | None = None
        # key -> the part keys of its value on the changelog, for keys whose value is split
        self._parts_of: dict[str, list[str]] = {}
        # part key -> bytes, read by recovery and not yet joined by a head
        self._recovered_parts: dict[str, bytes] = {}

    def changelog_records(self, key: str, value: bytes | None) -> list[tuple[str, bytes | None]]:
        """The changelog records that write ``value`` under ``key``: the value itself, or its
        parts and head; then tombstones for the parts of the value it replaces."""
        replaced = self._parts_of.pop(key, None)
        if value is not None and len(value) > VALUE_PART_BYTES:
            parts, head = split_value(value)
            records: list[tuple[str, bytes | None]] = [*parts, (key, head)]
            self._parts_of[key] = [part for part, _ in parts]
        else:
            records = [(key, value)]
        if replaced:
            records.extend((part, None) for part in replaced)
        return records

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        super().apply_changelog_batch(self._joined(batch) if self.joins_parts else batch)

    def _joined(self, batch: Iterable[EventT]) -> Iterator[Any]:
        """Changelog events with parts held back and every head replaced by the value its parts
        make up, at the head's offset."""
        parts = self._recovered_parts
        for event in batch:
            key = event.key
            message = event.message
            value = message.value
            if is_part_key(key):
                if value is None:
                    parts.pop(key, None)
                else:
                    parts[key] = value
                continue
            if value is None or not value.startswith(HEAD_MARK):
                self._parts_of.pop(key, None)
                yield event
                continue
            names = part_keys(value)
            missing = [name for name in names if name not in parts]
            if missing:
                raise MissingValuePart(
                    f"{self.name}: the value of a key at {message.tp}@{message.offset} names "
                    f"{len(missing)} part(s) the changelog did not hold before it"
                )
            joined = b"".join(parts.pop(name) for name in names)
            self._parts_of[key] = names
            yield _Joined(
                key, joined, ChangelogRecord(message.tp, message.partition, message.offset, message.key, joined)
            )

    def send_changelog(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> FutureMessage:
        if isinstance(key, str) and (
            (isinstance(value, bytes) and len(value) > VALUE_PART_BYTES) or key in self._parts_of
        ):
            sent = [
                self._send_one(partition, record_key, record_value, key_serializer, value_serializer)
                for record_key, record_value in self.changelog_records(key, value)
            ]
            return sent[-1]
        return self._send_one(partition, key, value, key_serializer, value_serializer)

    def _send_one(
        self,
        partition: int | None,
        key: Any,
        value: Any,
        key_serializer: Any = None,
        value_serializer: Any = None,
    ) -> FutureMessage:
        message = self.changelog_topic.as_future_message(
            key=key,
            value=value,
            partition=partition,
            key_serializer=key_serializer or self.key_serializer,
            value_serializer=value_serializer or self.value_serializer,
            callback=self._on_changelog_sent,
            eager_partitioning=True,
        )
        self._unacknowledged.append(message)
        # One task publishes, in order, every write made for a source partition until it runs
        # (a batch writes thousands of keys; a task each cost more than the write). The task
        # copies this context, so its sends know which source partition they serve.
        event = current_event()
        source = (event.message.topic, event.message.partition) if event is not None else None
        queued = self._queued.get(source)
        if queued is None:
            queued = self._queued[source] = []
            asyncio.ensure_future(self._publish_queued(source, queued))
        queued.append(message)
        return message

    async def _publish_queued(self, source: tuple[str, int] | None, queued: list[FutureMessage]) -> None:
        try:
            index = 0
            while index < len(queued):
                await self._publish(queued[index])
                index += 1
        finally:
            # No await since the last look at the queue: a later write starts a task of its own.
            del self._queued[source]

    async def _publish(self, message: FutureMessage) -> None:
        try:
            await self.changelog_topic.publish_message(message)
        except Exception as error:
            # A send refused before it reached the producer (Faust raises then, and never
            # resolves the message): wait_for_writes would otherwise wait for ever.
            if not message.done():
                message.set_exception(error)

    def stored(self) -> MutableMapping[str, bytes]:
        """The store's values by key: for Faust's in-memory store its own dict, which answers
        without the Python-level ``get`` and ``__setitem__`` of the store (a ``KeyError`` raised
        and caught for every key it does not hold)."""
        store = self.data
        own = getattr(store, "data", None)
        return own if type(own) is dict else store

    def put_many(self, partition: int, items: Sequence[tuple[str, bytes]]) -> None:
        """Set every ``(key, value)`` of ``items`` (keys of ``partition``, each once) in the store and
        send them to the changelog, as ``table[key] = value`` would one by one.

        The records carry the bytes Faust's own writes would; they go in record batches to the
        changelog partition on the producer Faust would use for it (under exactly_once, the source
        partition's transactional producer). A send that fails is raised by ``wait_for_writes``.
        """
        if not items:
            return
        store = self.stored()
        encode = self._changelog_key_encoder()
        split = self._parts_of
        records: list[tuple[bytes, bytes | None]] = []
        for key, value in items:
            store[key] = value
            if len(value) <= VALUE_PART_BYTES and key not in split:
                records.append((encode(key), value))
            else:
                records.extend((encode(name), part) for name, part in self.changelog_records(key, value))
        previous = self._sending.get(partition)
        sending = asyncio.ensure_future(self._send_records(partition, records, previous))
        self._sending[partition] = sending
        sending.add_done_callback(lambda done: self._forget_sending(partition, done))
        self._unacknowledged.append(sending)

    def _forget_sending(self, partition: int, done: asyncio.Future[None]) -> None:
        if self._sending.get(partition) is done:
            del self._sending[partition]

    async def _send_records(
        self, partition: int, records: list[tuple[bytes, bytes | None]], previous: asyncio.Future[None] | None
    ) -> None:
        if previous is not None:
            # Writes of one partition reach its changelog in the order they were made.
            with contextlib.suppress(Exception):
                await previous
        producer, lock = self._changelog_producer(partition)
        topic = self.changelog_topic.get_topic_name()
        txn = producer._txn_manager  # noqa: SLF001
        transactional = txn is not None and txn.transactional_id is not None
        compression = getattr(producer, "_compression_type", None) or 0  # aiokafka's code; 0 is none
        delivered = []
        async with lock:
            batch = BatchBuilder(CHANGELOG_BATCH_BYTES, compression, is_transactional=transactional)
            for key, value in records:
                if batch.append(timestamp=None, key=key, value=value) is None:
                    delivered.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = BatchBuilder(CHANGELOG_BATCH_BYTES, compression, is_transactional=transactional)
                    # An empty batch takes any one record; the broker judges its size.
                    batch.append(timestamp=None, key=key, value=value)
            delivered.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*delivered)

    def _changelog_producer(self, partition: int) -> tuple[Any, Any]:
        """The aiokafka producer Faust sends this table's changelog records for ``partition`` on,
        and the lock Faust holds around a send on it (none outside transactions)."""
        app = self.app
        driver = app.producer  # Faust's producer service, transactional or not
        if not app.in_transaction:
            return driver._ensure_producer(), contextlib.nullcontext()  # noqa: SLF001
        group = app.assignor.group_for_topic(self.changelog_topic.get_topic_name())
        transactional_id = f"{app.conf.id}-{group}-{partition}"
        transactional = driver._transaction_producers.get(transactional_id)  # noqa: SLF001
        if transactional is None:
            # Faust's own words, which streams/runtime/fencing.py knows as a lost transaction.
            raise ProducerSendError(f"No transaction producer found for : {transactional_id}")
        return transactional, driver._trn_locks[transactional_id]  # noqa: SLF001

    def _changelog_key_encoder(self) -> Callable[[str], bytes]:
        encoder = self._changelog_encoder
        if encoder is None:
            topic, serializer = self.changelog_topic, self.key_serializer
            encoder = self._changelog_encoder = fast_key_encoder(lambda key: topic.prepare_key(key, serializer)[0])
        return encoder

    def forget_unacknowledged(self) -> None:
        """Drop the writes still awaited: their transaction is lost (streams/runtime/fencing.py)."""
        for message in self._unacknowledged:
            message.add_done_callback(retrieve_exception)
        self._unacknowledged = []

    async def write(self, key: Any, value: Any) -> None:
        """``table[key] = value``, then wait until the broker has its changelog record. Unlike
        ``wait_for_writes`` it waits for this write itself, so tasks writing side by side (the
        mail outbox's) each know their own write is safe."""
        self[key] = value
        written = self._unacknowledged[-1]  # appended by send_changelog within the assignment
        await written

    async def wait_for_writes(self) -> None:
        pending, self._unacknowledged = self._unacknowledged, []
        if pending:
            await asyncio.gather(*pending)


_KEY_SAMPLE = 'ws_1\x1fe\u00e9\u4e2d\U0001f600"\\/ \n'


def json_string(key: str) -> bytes:
    """``key`` as a JSON string in UTF-8, as orjson writes it. ``orjson.dumps`` starts every
    output in a fresh buffer of a kilobyte: thousands of small results kept at once (the keys of
    a multi-get) cost a page fault each, and made key encoding the largest cost of a lookup."""
    return encode_basestring(key).encode()


def fast_key_encoder(own: Callable[[str], bytes]) -> Callable[[str], bytes]:
    """A table's JSON key encoding: ``own`` (Faust's, through its codec registry, about 2 µs a
    key) or ``json_string``, the same bytes at a tenth of the cost, once the two are seen to
    agree on a key with every kind of character."""
    return json_string if own(_KEY_SAMPLE) == json_string(_KEY_SAMPLE) else own
