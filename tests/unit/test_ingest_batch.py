"""An ingest batch: packed inbox records on each workspace's own partition, today's dead letters,
and offsets that cover exactly the messages taken."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from meterwatch.models.internal import EVENT_ID, O_KEY, O_OFFSET, ORIGIN, ROWS, WORKSPACE
from meterwatch.models.outputs import dead_letter
from meterwatch.models.usage_event import parse_usage_message
from meterwatch.streams.pipeline import ingest
from meterwatch.streams.pipeline.ingest import BatchBuilder, InboxPartitioner, take_batch

from tests.support.messages import event

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TOPIC = "usage.events"


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_764_000_000_000


def record(offset: int, value: Any, key: bytes | None = b"k", partition: int = 0) -> Record:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return Record(TOPIC, partition, offset, key, raw)


def decoded(batch: Any) -> list[tuple[int, dict]]:
    return [(partition, orjson.loads(raw)) for partition, raw in batch.inbox]


@pytest.mark.parametrize("partitions", [1, 4, 8, 12])
def test_inbox_partition_is_the_default_partitioners_for_the_raw_key(partitions: int) -> None:
    ours = InboxPartitioner(partitions)
    keys = [f"ws-{i}" for i in range(2000)] + [
        "ws-\U0001f469\u200d\U0001f469",
        "\u0645\u0633\u0627\u062d\u0629",
        "w" * 256,
    ]
    every = list(range(partitions))
    for key in keys:
        expected = DefaultPartitioner()(key.encode(), every, every)
        assert ours(key) == expected
        assert ours(key) == expected  # and again, from its memory


def test_good_events_are_packed_per_partition_with_their_origin_once() -> None:
    partition_of = InboxPartitioner(4)
    builder = BatchBuilder(partition_of, NOW)
    batch_value = [event(f"ws-{i % 7}", event_id=f"b{i}") for i in range(30)]
    builder.add(record(10, event("ws-1", event_id="single")))
    builder.add(record(11, batch_value, key=b"x" * 100_000))
    batch = builder.build()
    assert batch.messages == 2 and batch.events == 31
    assert batch.next_offsets == {(TOPIC, 0): 12} and batch.first_offsets == {(TOPIC, 0): 10}
    seen = []
    for partition, document in decoded(batch):
        assert document["kind"] == ROWS
        for row in document["rows"]:
            assert partition_of(row[WORKSPACE]) == partition
            seen.append(row[EVENT_ID])
        # One origin per source message, each key stored once and cut to what a dead letter keeps.
        offsets = [origin[O_OFFSET] for origin in document["origins"]]
        assert len(offsets) == len(set(offsets))
        for origin in document["origins"]:
            assert origin[O_KEY] is None or len(origin[O_KEY]) <= 64 * 1024
        assert {row[ORIGIN] for row in document["rows"]} == set(range(len(document["origins"])))
    assert sorted(seen) == sorted(["single"] + [f"b{i}" for i in range(30)])
    assert batch.dead_letters == [] and not batch.rejected


def test_bad_events_are_dead_lettered_as_before_and_the_good_ones_forwarded() -> None:
    good = event("ws-a", event_id="good")
    bad = [{**event("ws-a"), "metric": "pigeons"}, event("ws-b", quantity=0), 7]
    messages = [record(0, [good, *bad]), record(1, b"\xff"), record(2, b"{nope"), record(3, [event("ws-a")] * 1001)]
    builder = BatchBuilder(InboxPartitioner(4), NOW)
    for message in messages:
        builder.add(message)
    batch = builder.build()
    assert [row[EVENT_ID] for _, doc in decoded(batch) for row in doc["rows"]] == ["good"]
    expected = []
    for message in messages:
        for rejection in parse_usage_message(message.value)[1]:
            letter = dead_letter(
                source_topic=TOPIC,
                partition=0,
                offset=message.offset,
                key=message.key,
                value=rejection.value if rejection.value is not None else message.value,
                code=rejection.code,
                message=rejection.message,
                at=NOW,
            )
            key = rejection.workspace_id.encode() if rejection.workspace_id is not None else None
            expected.append((key, letter))
    assert [(key, orjson.loads(raw)) for key, raw in batch.dead_letters] == expected
    assert batch.rejected == {
        "unknown_metric": 1,
        "zero_quantity": 1,
        "invalid_schema": 1,
        "invalid_encoding": 1,
        "invalid_json": 1,
        "batch_too_large": 1,
    }


def test_an_unforeseen_failure_is_that_messages_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(raw: bytes | None) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(ingest, "parse_usage_message", explode)
    builder = BatchBuilder(InboxPartitioner(2), NOW)
    builder.add(record(0, event("ws-a", event_id="before")))
    builder.add(record(1, b"{odd"))
    builder.add(record(2, event("ws-a", event_id="after")))
    batch = builder.build()
    assert [row[EVENT_ID] for _, doc in decoded(batch) for row in doc["rows"]] == ["before", "after"]
    assert batch.rejected == {"internal_error": 1}
    ((key, raw),) = batch.dead_letters
    letter = orjson.loads(raw)
    assert key is None and letter["offset"] == 1 and letter["error"]["code"] == "internal_error"
    assert batch.next_offsets == {(TOPIC, 0): 3}


def test_a_batch_is_bounded_by_events_and_keeps_the_rest() -> None:
    pending = deque(record(i, [event("ws-a") for _ in range(1000)]) for i in range(5))
    pending.append(record(5, event("ws-a"), partition=1))
    first = take_batch(pending, InboxPartitioner(4), NOW, max_events=2500, max_messages=100)
    assert first.messages == 3 and first.events == 3000
    assert first.next_offsets == {(TOPIC, 0): 3}
    second = take_batch(pending, InboxPartitioner(4), NOW, max_events=2500, max_messages=100)
    assert second.messages == 3 and second.events == 2001
    assert second.first_offsets == {(TOPIC, 0): 3, (TOPIC, 1): 5}
    assert second.next_offsets == {(TOPIC, 0): 5, (TOPIC, 1): 6}
    assert not pending


def test_slow_path_rows_carry_the_same_utc_text_as_the_fast_path() -> None:
    plain = event("ws-a", event_id="p")
    plain["occurred_at"] = "2026-11-24T10:00:00+01:00"
    odd = {**plain, "event_id": "o", "occurred_at": "2026-11-24 10:00:00+01:00"}
    builder = BatchBuilder(InboxPartitioner(1), NOW)
    builder.add(record(0, plain))
    builder.add(record(1, odd))
    rows = [row for _, doc in decoded(builder.build()) for row in doc["rows"]]
    assert [row[4] for row in rows] == ["2026-11-24T09:00:00+00:00"] * 2
