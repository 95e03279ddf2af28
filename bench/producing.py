"""Events, message shapes and fast producers for the benchmark (bench/run.py)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

METRIC = "messages_sent"
PRODUCER_SETTINGS = {"acks": 1, "linger_ms": 50, "max_batch_size": 512 * 1024, "compression_type": None}


@dataclass(frozen=True)
class Shape:
    """Message ``m`` belongs to workspace ``m mod workspaces`` and is keyed by it; it carries
    ``events_per_message`` events (1: a single JSON object; more: a JSON array)."""

    name: str
    label: str
    events_per_message: int
    workspaces: int
    messages: int

    @property
    def events(self) -> int:
        return self.messages * self.events_per_message

    def workspace(self, message: int) -> str:
        return f"ws_bench_{message % self.workspaces:06d}"

    def workspace_names(self) -> list[str]:
        return [self.workspace(i) for i in range(self.workspaces)]

    def expected(self, messages: int | None = None) -> dict[str, int]:
        """Per workspace, the quantity sent in the first ``messages`` messages."""
        n = self.messages if messages is None else messages
        w = self.workspaces
        per = self.events_per_message
        return {self.workspace(i): (n // w + (1 if i < n % w else 0)) * per for i in range(min(n, w))}

    def encode(self, rng: random.Random, first: int, count: int) -> list[tuple[bytes, bytes]]:
        """(key, value) of messages ``first`` … ``first + count - 1``; distinct random 128-bit
        event ids, ``occurred_at`` now (so every event is in the current period)."""
        now = datetime.now(UTC).isoformat()
        bits = rng.getrandbits
        per = self.events_per_message
        out: list[tuple[bytes, bytes]] = []
        for m in range(first, first + count):
            ws = self.workspace(m)
            events = [
                {
                    "event_id": f"{bits(128):032x}",
                    "workspace_id": ws,
                    "metric": METRIC,
                    "quantity": 1,
                    "occurred_at": now,
                }
                for _ in range(per)
            ]
            out.append((ws.encode(), orjson.dumps(events[0] if per == 1 else events)))
        return out


def make_shape(name: str, events: int, batch_size: int) -> Shape:
    if name == "single1k":
        return Shape(name, "single events, 1,000 workspaces", 1, 1_000, events)
    if name == "single100k":
        # At least two events per workspace, so every workspace is read, updated and written again.
        return Shape(name, "single events, 100,000 workspaces", 1, 100_000, max(events, 200_000))
    if name == "batch":
        # At least 1,000,000 events: 200,000 in batches are counted in about a second, no longer
        # than the worker takes to settle after it first answers /health.
        events = max(events, 1_000_000)
        return Shape(name, f"batches of {batch_size}, 1,000 workspaces", batch_size, 1_000, -(-events // batch_size))
    raise ValueError(f"unknown shape {name!r} (single1k, single100k, batch)")


class Producer:
    """A fast aiokafka producer: hand-built batches per partition (``send_batch``), keys
    partitioned like Kafka's default partitioner (murmur2)."""

    def __init__(self, bootstrap: str, partitions: int, **settings: Any) -> None:
        from aiokafka.partitioner import DefaultPartitioner

        self.bootstrap = bootstrap
        self.partitions = partitions
        self.settings = {**PRODUCER_SETTINGS, **settings}
        partitioner = DefaultPartitioner()
        every = list(range(partitions))
        cache: dict[bytes, int] = {}

        def partition_of_key(key: bytes) -> int:
            found = cache.get(key)
            if found is None:
                found = cache[key] = partitioner(key, every, every)
            return found

        self.partition_of_key = partition_of_key

    async def create_topic(self, topic: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, num_partitions=self.partitions, replication_factor=1)])
        finally:
            await admin.close()

    async def produce(self, topic: str, chunks: Iterable[list[tuple[bytes, bytes]]]) -> dict[str, Any]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **self.settings)
        await producer.start()
        started = time.perf_counter()
        messages = size = 0
        try:
            pending: list[asyncio.Future[Any]] = []
            batches = {p: producer.create_batch() for p in range(self.partitions)}
            for chunk in chunks:
                for key, value in chunk:
                    partition = self.partition_of_key(key)
                    messages += 1
                    size += len(value)
                    batch = batches[partition]
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = batches[partition] = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise RuntimeError(f"a {len(value)}-byte message does not fit in an empty batch")
                    if len(pending) > 64:
                        await asyncio.gather(*pending)
                        pending.clear()
            for partition, batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        return {"messages": messages, "bytes": size, "seconds": time.perf_counter() - started}

    async def produce_paced(
        self, topic: str, messages: list[tuple[bytes, bytes]], per_second: float, tick: float = 0.005
    ) -> dict[str, Any]:
        """Send ``messages`` at ``per_second``: every ``tick`` the messages now due are appended
        (stamped with the current time) and sent at once, so no event waits on a linger."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **{**self.settings, "linger_ms": 0})
        await producer.start()
        sent = 0
        behind_max = 0.0
        started = time.perf_counter()
        try:
            pending: list[asyncio.Future[Any]] = []
            while sent < len(messages):
                now = time.perf_counter()
                due = min(len(messages), int((now - started) * per_second) + 1)
                behind_max = max(behind_max, (due - sent) / per_second)
                batches: dict[int, Any] = {}
                for key, value in messages[sent:due]:
                    partition = self.partition_of_key(key)
                    batch = batches.get(partition)
                    if batch is None:
                        batch = batches[partition] = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = batches[partition] = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                for partition, batch in batches.items():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
                sent = due
                pending = [f for f in pending if not f.done()]
                # Events are stamped when appended, so waiting here delays no event's timestamp.
                await asyncio.sleep(tick)
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        seconds = time.perf_counter() - started
        return {
            "messages": sent,
            "seconds": seconds,
            "achieved_per_s": sent / seconds if seconds > 0 else None,
            "max_backlog_seconds": behind_max,
        }


def in_chunks(
    shape: Shape, rng: random.Random, first: int, stop: int, chunk: int = 20_000
) -> Iterator[list[tuple[bytes, bytes]]]:
    """Messages ``first`` … ``stop - 1`` encoded a chunk at a time, so millions of events never
    sit in memory at once."""
    for at in range(first, stop, chunk):
        yield shape.encode(rng, at, min(chunk, stop - at))
