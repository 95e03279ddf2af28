"""A Faust table whose changelog writes are sent at once and can be awaited.

Faust queues table writes in a buffer that a background task drains, and its ``flush`` gives up
after 0.1 s with messages still queued, so an offset could be committed ahead of the state it
produced. Here each write is published from the writing task itself (so, under exactly_once, it
joins the transaction of the partition being processed) and its future is kept until
``wait_for_writes`` has seen the broker acknowledge it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.streams import current_event
from faust.types import FutureMessage

from ..logs import FAUST_SERVICES_LOG
from ..sinks.kafka import retrieve_exception


class DurableTable(faust.Table):
    logger = FAUST_SERVICES_LOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged: list[FutureMessage] = []
        self._queued: dict[tuple[str, int] | None, list[FutureMessage]] = {}

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
