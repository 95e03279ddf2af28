"""Producing to and reading from the real broker in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, Any] | tuple[bytes | None, Any, list[tuple[str, bytes]]]],
    *,
    timestamp_ms: int | None = None,
) -> None:
    """Send (key, value) or (key, value, headers); dict/list values are JSON-encoded, bytes sent
    as they are.

    ``timestamp_ms`` sets the records' timestamp, which the broker keeps (CreateTime) and
    meterwatch reads as the moment a command or event was received.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = []
        for key, value, *headers in messages:
            raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
            sent = await producer.send(
                topic, raw, key=key, timestamp_ms=timestamp_ms, headers=headers[0] if headers else None
            )
            futures.append(sent)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_one(bootstrap: str, topic: str, key: bytes | None, value: Any) -> int:
    """Send one JSON record and return the timestamp (ms) the broker gave it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, orjson.dumps(value), key=key)
    finally:
        await producer.stop()
    return metadata.timestamp


def topic_reader(bootstrap: str, topic: str, *, isolation: str = "read_committed") -> AIOKafkaConsumer:
    """A consumer (not started yet) of the whole topic from its beginning, in no group, committing nothing.

    ``read_all`` and ``read_timestamped`` read with one; a test that follows a topic for a while
    can start its own.
    """
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level=isolation,
    )


async def read_timestamped(bootstrap: str, topic: str, *, timeout: float = 5.0) -> list[tuple[int, Any]]:
    """Every record of a committed topic as (timestamp in ms, decoded value)."""
    consumer = topic_reader(bootstrap, topic)
    await consumer.start()
    records: list[tuple[int, Any]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            records.extend((m.timestamp, orjson.loads(m.value)) for msgs in batch.values() for m in msgs)
            if records and not batch:
                break
    finally:
        await consumer.stop()
    return records


async def read_records(bootstrap: str, topic: str, *, isolation: str = "read_committed") -> list[Any]:
    """Every record of ``topic`` as aiokafka gives it (key, value, partition, offset), read until
    the topic has been quiet for a few seconds."""
    consumer = topic_reader(bootstrap, topic, isolation=isolation)
    await consumer.start()
    records: list[Any] = []
    quiet_polls = 0
    try:
        while quiet_polls < 6:
            batch = await consumer.getmany(timeout_ms=500)
            got = [m for msgs in batch.values() for m in msgs]
            records.extend(got)
            quiet_polls = 0 if got else quiet_polls + 1
    finally:
        await consumer.stop()
    return records


async def read_all(
    bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 20.0, isolation: str = "read_committed"
) -> list[Any]:
    """Read a topic from the beginning: until ``expect`` records, or until it is quiet."""
    consumer = topic_reader(bootstrap, topic, isolation=isolation)
    await consumer.start()
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_since = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            got = [orjson.loads(m.value) for msgs in batch.values() for m in msgs]
            records.extend(got)
            if got:
                quiet_since = loop.time()
            if expect is not None and len(records) >= expect:
                # Linger briefly so that an unexpected extra record is caught too.
                extra = await consumer.getmany(timeout_ms=1000)
                records.extend(orjson.loads(m.value) for msgs in extra.values() for m in msgs)
                break
            if expect is None and records and loop.time() - quiet_since > 2.0:
                break
    finally:
        await consumer.stop()
    return records


async def apply_commands(deployment: dict[str, str], commands: list[dict], *, applied: bool = False) -> None:
    """Publish ``commands`` to ``usage.control``, each keyed by its workspace, and wait until
    every one has its result (``applied``: has been applied)."""
    from .worker import eventually

    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    await produce(bootstrap, prefix + "usage.control", [(c["workspace_id"].encode(), c) for c in commands])
    ids = {c["command_id"] for c in commands}

    async def answered() -> bool:
        results = await read_all(bootstrap, prefix + "usage.command-results", timeout=2)
        return ids <= {r["command_id"] for r in results if not applied or r["status"] == "applied"}

    await eventually(answered, timeout=60)


async def committed_offsets(deployment: dict[str, str], topic: str) -> dict[int, int | None]:
    """The worker group's committed offsets on ``topic``, by partition (read by a consumer of
    the group that never joins it: the embedded broker's answer to the admin client's
    OffsetFetch does not decode)."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    group = deployment["METERWATCH_TOPIC_PREFIX"] + deployment["METERWATCH_APP_ID"]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = range(int(deployment["METERWATCH_PARTITIONS"]))
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await consumer.stop()
