"""A Faust table whose changelog writes are sent at once and can be awaited.

Faust queues table writes in a buffer that a background task drains, and its ``flush`` gives up
after 0.1 s with messages still queued, so an offset could be committed ahead of the state it
produced. Here each write is published from the writing task itself (so, under exactly_once, it
joins the transaction of the partition being processed) and its future is kept until
``wait_for_writes`` has seen the broker acknowledge it.

``put_many`` writes a batch's keys of one partition at once: into the store, and to the
changelog as record batches built here and handed to the partition's producer whole, so a key
costs its bytes rather than a message future, a send and Faust's bookkeeping each.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

import faust
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.types import FutureMessage

from ..logs import FAUST_SERVICES_LOG
from ..sinks.kafka import retrieve_exception

# A changelog record batch: well under the broker's default 1 MB message size.
CHANGELOG_BATCH_BYTES = 512 * 1024


class DurableTable(faust.Table):
    logger = FAUST_SERVICES_LOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: list[FutureMessage] = []
        self._queued: dict[tuple[str, int] | None, list[FutureMessage]] = {}
        self._sending: dict[int, asyncio.Future[None]] = {}
        self._changelog_encoder: Callable[[str], bytes] | None = None

    def send_changelog(
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

    def put_many(self, partition: int, items: Sequence[tuple[str, bytes]]) -> None:
        """Set every ``(key, value)`` of ``items`` (keys of ``partition``, each once) in the store and
        send them to the changelog, as ``table[key] = value`` would one by one.

        The records carry the bytes Faust's own writes would; they go in record batches to the
        changelog partition on the producer Faust would use for it (under exactly_once, the source
        partition's transactional producer). A send that fails is raised by ``wait_for_writes``.
        """
        if not items:
            return
        store = self.data
        encode = self._changelog_key_encoder()
        records = []
        for key, value in items:
            store[key] = value
            records.append((encode(key), value))
        previous = self._sending.get(partition)
        sending = asyncio.ensure_future(self._send_records(partition, records, previous))
        self._sending[partition] = sending
        sending.add_done_callback(lambda done: self._forget_sending(partition, done))
        self._unacknowledged.append(sending)

    def _forget_sending(self, partition: int, done: asyncio.Future[None]) -> None:
        if self._sending.get(partition) is done:
            del self._sending[partition]

    async def _send_records(
        self, partition: int, records: list[tuple[bytes, bytes]], previous: asyncio.Future[None] | None
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
            # Faust's own words, which streams/fencing.py knows as a lost transaction.
            raise ProducerSendError(f"No transaction producer found for : {transactional_id}")
        return transactional, driver._trn_locks[transactional_id]  # noqa: SLF001

    def _changelog_key_encoder(self) -> Callable[[str], bytes]:
        encoder = self._changelog_encoder
        if encoder is None:
            topic, serializer = self.changelog_topic, self.key_serializer
            encoder = self._changelog_encoder = fast_key_encoder(lambda key: topic.prepare_key(key, serializer)[0])
        return encoder

    def forget_unacknowledged(self) -> None:
        """Drop the writes still awaited: their transaction is lost (streams/fencing.py)."""
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
