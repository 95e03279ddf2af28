"""Where outputs go: the sinks every stage hands its recorded outputs to.

A sink is anything with ``publish(output)`` and ``flush()``; ``compose`` lists them. A stage
makes one ``Sinks`` per batch, publishes each part's outputs while acting for that part's source
partition (so that, under exactly_once, they join its transaction), and flushes once before its
input is acknowledged. Every sink sees every output, internal messages included, and takes the
kinds it serves. Adding a sink is a module with such a class and one line in ``compose``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ..models.outputs import Output
from .kafka import KafkaSink
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


def compose(channels: Any, *, webhooks: bool = False) -> Sinks:
    """The sinks of one batch; ``channels`` is the app's ``Channels``. With ``webhooks`` (some
    ``METERWATCH_WEBHOOK_URLS``), each alert, Fin transition and notification is also requested
    to be posted to them."""
    kafka = KafkaSink(channels)
    return Sinks([kafka, WebhookRequestSink(kafka)] if webhooks else [kafka])
