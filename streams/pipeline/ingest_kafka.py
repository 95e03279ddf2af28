"""The Kafka clients of the ingest stage (streams/pipeline/ingest.py) and where its consumer starts reading."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ...config import Settings
from ..runtime.consumer import FETCH_MAX_WAIT_MS
from ..runtime.kafka_client import client_options, close_quietly

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger("meterwatch.streams.pipeline.ingest")

CLOSE_SECONDS = 5.0
# Records wait this long for company: a few ms of latency buys far fewer produce requests.
LINGER_MS = 5
# A transaction left open by a worker that died is aborted by the broker after this; until then
# the inbox partitions it wrote to are held back from read_committed readers. A restarted worker
# (same transactional id) ends it at once.
TRANSACTION_TIMEOUT_MS = 20_000
LOOKUP_ATTEMPTS = 5


def ingest_group(settings: Settings) -> str:
    """The ingest consumer's own group: Faust's group uses Faust's assignor, so they cannot share."""
    return f"{settings.group_id}-ingest"


def transactional_id(settings: Settings) -> str:
    """Stable per worker (its advertised web address is unique in a deployment): a restarted
    worker fences its former self and ends any transaction it left open."""
    return f"{ingest_group(settings)}-{settings.web_host}:{settings.web_port}"


def new_consumer(mw: Meterwatch, group: str, *, isolation_committed: bool) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=mw.bootstrap,
        group_id=group,
        client_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # Producers of usage.events may be transactional: what they aborted is not usage.
        isolation_level="read_committed" if isolation_committed else "read_uncommitted",
        # As Faust's consumer: a worker that died is noticed, and its partitions handed on, in seconds.
        session_timeout_ms=10_000,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        heartbeat_interval_ms=1_000,
        **client_options(mw.settings),
    )


async def new_producer(mw: Meterwatch, *, transactional: bool) -> AIOKafkaProducer:
    """A transactional producer under exactly_once; otherwise an idempotent one where the broker
    gives it, else a plain one (the embedded broker has no producer ids). Either keeps each
    partition's order: aiokafka has one request per partition in flight."""
    options: dict[str, Any] = {
        "bootstrap_servers": mw.bootstrap,
        "client_id": ingest_group(mw.settings),
        "acks": "all",
        "linger_ms": LINGER_MS,
        "max_batch_size": 1024 * 1024,
        **client_options(mw.settings),
    }
    if transactional:
        options.update(
            enable_idempotence=True,
            transactional_id=transactional_id(mw.settings),
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        )
        return await _started(AIOKafkaProducer(**options))
    # aiokafka logs the broker's refusal as an error; here it is an answer, reported below.
    sender_log = logging.getLogger("aiokafka.producer.sender")
    previous_level = sender_log.level
    sender_log.setLevel(logging.CRITICAL)
    try:
        return await _started(AIOKafkaProducer(enable_idempotence=True, **options))
    except KafkaError as error:
        log.info("ingest: the broker gives no idempotent producer (%s); using a plain one", type(error).__name__)
    finally:
        sender_log.setLevel(previous_level)
    return await _started(AIOKafkaProducer(**options))


async def _started(producer: AIOKafkaProducer) -> AIOKafkaProducer:
    try:
        await producer.start()
    except BaseException:
        await close_quietly("ingest producer", producer.stop(), CLOSE_SECONDS)
        raise
    return producer


async def start_positions(
    mw: Meterwatch, consumer: AIOKafkaConsumer, group: str, assigned: set[TopicPartition]
) -> dict[tuple[str, int], int]:
    """Seek each newly assigned partition to where it is read from, and return those positions.

    The ingest group's own commit comes first. A partition it never committed starts where
    Faust's group committed it: a worker upgraded from the version whose Faust agent read
    ``usage.events`` carries on where that agent stopped instead of reading the whole topic again
    (older events would count again once past the dedupe window). What no group committed starts
    at the beginning. Every partition is sought explicitly: aiokafka starts fetching before the
    rebalance listener has run, and what it fetched from elsewhere is dropped by the seek.

    Raises if the offsets cannot be learnt: reading from the beginning by mistake is worse than
    not reading."""
    positions: dict[TopicPartition, int] = {}
    missing: list[TopicPartition] = []
    for tp in sorted(assigned):
        offset = await consumer.committed(tp)
        if offset is None:
            missing.append(tp)
        else:
            positions[tp] = offset
    if missing:
        inherited = await _group_offsets(mw, mw.settings.group_id, missing)
        unread = []
        for tp in missing:
            offset = inherited.get(tp)
            if offset is None:
                unread.append(tp)
                continue
            positions[tp] = offset
            log.info(
                "ingest: %s[%d] starts at %d, where group %s left it",
                tp.topic,
                tp.partition,
                offset,
                mw.settings.group_id,
            )
        if unread:
            positions.update(await consumer.beginning_offsets(unread))
    for tp, offset in positions.items():
        consumer.seek(tp, offset)
    return {(tp.topic, tp.partition): offset for tp, offset in positions.items()}


async def _group_offsets(mw: Meterwatch, group: str, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The offsets ``group`` committed for ``partitions`` (those it committed none for are left out)."""
    last_error: Exception | None = None
    for attempt in range(LOOKUP_ATTEMPTS):
        admin = AIOKafkaAdminClient(bootstrap_servers=mw.bootstrap, **client_options(mw.settings))
        try:
            await asyncio.wait_for(admin.start(), CLOSE_SECONDS)
            found = await asyncio.wait_for(
                admin.list_consumer_group_offsets(group, partitions=partitions), CLOSE_SECONDS
            )
            return {tp: meta.offset for tp, meta in found.items() if meta is not None and meta.offset >= 0}
        except (KafkaError, OSError, TimeoutError) as error:
            last_error = error
            await asyncio.sleep(0.5 * 2**attempt)
        finally:
            await close_quietly("ingest admin client", admin.close(), CLOSE_SECONDS)
    raise RuntimeError(f"could not read the offsets group {group} committed: {last_error!r}")
