"""Where outputs go: the sinks every stage hands its recorded outputs to.

A sink is anything with ``publish(output)`` and ``flush()``; ``compose`` lists them. A stage
makes one ``Sinks`` per batch, publishes each part's outputs while acting for that part's source
partition (so that, under exactly_once, they join its transaction), and flushes once before its
input is acknowledged. Every sink sees every output, internal messages included, and takes the
kinds it serves. Adding a sink is a module with such a class and one line in ``compose``.

The one every stage has is ``KafkaSink``: each output to its topic, batched (send everything,
then wait for all acknowledgements). Since stages flush before their input is acknowledged, an
input is never committed ahead of what it produced (at-least-once without transactions; inside
the transaction with them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Protocol

import faust

from ..models.common import dumps
from ..models.outputs import Output
from .webhook import WebhookRequestSink


class Sink(Protocol):
    async def publish(self, output: Output) -> None: ...

    async def flush(self) -> None: ...


class Sinks:
    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._sinks = sinks

    async def publish(self, outputs: Iterable[Output]) -> None:
        for output in outputs:
            for sink in self._sinks:
                await sink.publish(output)

    async def flush(self) -> None:
        for sink in self._sinks:
            await sink.flush()


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


def compose(channels: Any, *, webhooks: bool = False) -> Sinks:
    """The sinks of one batch; ``channels`` is the app's ``Channels``. With ``webhooks`` (some
    ``METERWATCH_WEBHOOK_URLS``), each alert, Fin transition and notification is also requested
    to be posted to them."""
    kafka = KafkaSink(channels)
    return Sinks([kafka, WebhookRequestSink(kafka)] if webhooks else [kafka])
