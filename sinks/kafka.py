"""The Kafka sink: each output to its topic, batched: send everything, then wait for all
acknowledgements.

Stages flush before their input is acknowledged, so an input is never committed ahead of what
it produced (at-least-once without transactions; inside the transaction with them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import faust

from ..models.common import dumps
from ..models.outputs import Output


class KafkaSink:
    """Publishes each output to the topic its kind names among ``channels`` (``streams.app.Channels``)."""

    def __init__(self, channels: Any) -> None:
        self._channels = channels
        self._pending: list[Awaitable[Any]] = []

    async def publish(self, output: Output) -> None:
        channel: faust.TopicT = getattr(self._channels, output.kind.value)
        key, record = output.key, output.record
        value = record if isinstance(record, bytes) else dumps(record)
        # What channel.send does, keeping Faust's own promise of the send: it is the future Faust
        # fails when the send fails, and one nobody holds is logged by asyncio as an ERROR.
        message = channel.as_future_message(key=key.encode() if key is not None else None, value=value)
        await channel.publish_message(message)
        # flush() raises a failed send; a batch given up before its flush (streams/runtime/fencing.py)
        # leaves it unawaited, and it is no news then.
        message.add_done_callback(retrieve_exception)
        self._pending.append(message)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """Mark a finished future's error as seen (it is still raised to whoever awaits it)."""
    if not future.cancelled():
        future.exception()
