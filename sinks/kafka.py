"""Publishing records to topics, batched: send everything, then wait for all acknowledgements.

Callers wait before their input is acknowledged, so an input is never committed ahead of
what it produced (at-least-once without transactions; inside the transaction with them).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Protocol

import faust

from ..models.common import dumps


class Publisher(Protocol):
    async def publish(self, channel: faust.TopicT, key: str | None, record: Any) -> None: ...

    async def flush(self) -> None: ...


class TopicPublisher:
    def __init__(self) -> None:
        self._pending: list[Awaitable[Any]] = []

    async def publish(self, channel: faust.TopicT, key: str | None, record: Any) -> None:
        value = record if isinstance(record, bytes) else dumps(record)
        fut = await channel.send(key=key.encode() if key is not None else None, value=value)
        self._pending.append(fut)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)


class ListPublisher:
    """The in-memory twin for tests: records land in ``records`` as (topic, key, record)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str | None, Any]] = []

    async def publish(self, channel: faust.TopicT, key: str | None, record: Any) -> None:
        self.records.append((channel.get_topic_name(), key, record))

    async def flush(self) -> None:
        return None
