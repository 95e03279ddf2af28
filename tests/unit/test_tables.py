"""The tables as the worker declares them: names, partitions, and where their data lives."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import weakref
from dataclasses import fields
from types import SimpleNamespace

import orjson
import pytest
from faust.stores.memory import Store as MemoryStore
from faust.stores.rocksdb import Store as RocksDBStore
from faust.streams import _current_event
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st
from meterwatch.config import ProcessingGuarantee, load_settings
from meterwatch.core.dedupe import FirstSeen, encode_first_seen
from meterwatch.streams.app import Channels, create_app
from meterwatch.streams.runtime.durable_table import (
    HEAD_MARK,
    VALUE_PART_BYTES,
    MissingValuePart,
    is_part_key,
    part_keys,
    split_value,
)
from meterwatch.streams.runtime.seen_ids_store import IdSegments
from meterwatch.streams.runtime.seen_ids_table import CHUNK_KEY_PREFIX, pack_chunk
from meterwatch.streams.topics import TOPICS, TopicNames, topic_specs


def build(environ: dict[str, str]):  # type: ignore[no-untyped-def]
    asyncio.set_event_loop(asyncio.new_event_loop())
    return create_app(
        load_settings({"METERWATCH_AUTH": "off", **environ}), "127.0.0.1:9092", ProcessingGuarantee.AT_LEAST_ONCE
    )


_DEDUPE = build({})


class _ActingFor:
    """An event of one partition, as ``acting_for`` names it (weakly referenced)."""

    def __init__(self, message: SimpleNamespace) -> None:
        self.message = message


def test_the_dedupe_store_is_on_disk_so_memory_stays_bounded() -> None:
    mw = build({})
    assert isinstance(mw.tables.seen_event_ids.data, RocksDBStore)
    assert isinstance(mw.tables.workspaces.data, MemoryStore)
    # Faust's RocksDB defaults reserve up to 3 x 64 MiB of memtables and a 2 GiB block cache
    # per partition: the bounds that keep a worker's memory flat are ours, one cache for every
    # partition, with the memtables charged to it.
    options = mw.tables.seen_event_ids.data.rocksdb_options
    assert options.write_buffer_size * options.max_write_buffer_number <= 8 * 1024 * 1024
    assert options.block_cache_size <= 48 * 1024 * 1024
    assert options.memtable_budget <= options.block_cache_size
    # Ids expire by Kafka time, in segments of one window; no wall-clock TTL.
    assert options.ttl is None
    assert mw.tables.seen_event_ids.data.window_ms == 24 * 3600 * 1000
    # The changelog keeps its copy two windows and a week by the broker's clock.
    assert mw.tables.seen_event_ids._changelog_topic.config["retention.ms"] == str(9 * 24 * 3600 * 1000)  # noqa: SLF001


def test_every_partition_of_the_dedupe_store_shares_one_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mw = build({"METERWATCH_DATA_DIR": str(tmp_path)})
    store = mw.tables.seen_event_ids.data
    options = store.rocksdb_options
    for partition in (0, 5):
        store._db_for_partition(partition)  # noqa: SLF001
    assert set(store._dbs) == {0, 5}  # noqa: SLF001
    # Both databases were opened with the store's one cache and write buffer manager: their
    # memtables are charged to it as soon as they exist.
    assert options.write_buffer_manager.enabled()
    assert options.cache.get_usage() >= options.write_buffer_manager.get_usage() > 0
    assert set(mw.tables.seen_event_ids.memory()) == {
        "rocksdb_block_cache",
        "rocksdb_memtables",
        "rocksdb_table_readers",
    }


def test_every_name_carries_the_prefix_and_app_id() -> None:
    mw = build({"METERWATCH_TOPIC_PREFIX": "eu.", "METERWATCH_APP_ID": "billing", "METERWATCH_PARTITIONS": "12"})
    assert mw.app.conf.id == "eu.billing"
    for table in mw.tables.all():
        assert table.changelog_topic.get_topic_name().startswith("eu.billing-")
        assert table.partitions == 12
    assert mw.names.usage_events == "eu.usage.events"
    assert mw.names.workspace_inbox == "eu.billing-workspace-inbox"


def test_every_declared_topic_has_its_name_channel_and_spec() -> None:
    mw = build({"METERWATCH_TOPIC_PREFIX": "eu.", "METERWATCH_APP_ID": "billing", "METERWATCH_PARTITIONS": "12"})
    specs = {spec.name: spec for spec in topic_specs(mw.settings)}
    assert [field.name for field in fields(TopicNames)] == [topic.attribute for topic in TOPICS]
    assert [field.name for field in fields(Channels)] == [topic.attribute for topic in TOPICS]
    assert len(specs) == len(TOPICS)
    for topic in TOPICS:
        name = getattr(mw.names, topic.attribute)
        channel = getattr(mw.channels, topic.attribute)
        assert channel.get_topic_name() == name
        assert name == (f"eu.billing-{topic.name}" if topic.internal else f"eu.{topic.name}")
        assert (specs[name].partitions, specs[name].internal) == (12, topic.internal)
        assert specs[name].config()["cleanup.policy"] == ("compact" if topic.compacted else "delete")
    assert mw.names.limits in specs and specs[mw.names.limits].compacted
    assert mw.names.lag_watched() == {
        "eu.usage.control",
        "eu.billing-workspace-inbox",
        "eu.billing-contract-inbox",
        "eu.billing-mail-requests",
        "eu.billing-webhook-requests",
    }


def test_faust_reads_no_environment_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kubernetes sets WEB_PORT=tcp://10.0.0.1:80 for a Service named "web".
    monkeypatch.setenv("WEB_PORT", "tcp://10.0.0.1:80")
    monkeypatch.setenv("BROKER", "kafka://elsewhere:9092")
    mw = build({"METERWATCH_WEB_PORT": "7000"})
    assert mw.app.conf.web_port == 7000
    assert [str(url) for url in mw.app.conf.broker] == ["kafka://127.0.0.1:9092"]


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_the_dedupe_lookups_encode_keys_exactly_as_the_store_does(key: str) -> None:
    table = _DEDUPE.tables.seen_event_ids
    assert table._encode_keys([key]) == [table.data._encode_key(key)]  # noqa: SLF001


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_bulk_table_writes_key_changelog_records_exactly_as_faust_does(key: str) -> None:
    table = _DEDUPE.tables.workspaces
    own = table.changelog_topic.prepare_key(key, table.key_serializer)[0]
    assert table._changelog_key_encoder()(key) == own == orjson.dumps(key)  # noqa: SLF001


def _remember(table, partition: int, batches: list[dict[str, FirstSeen]]) -> None:  # type: ignore[no-untyped-def]
    """Remember each of ``batches`` in ``partition`` as counting does, one write batch each; the
    changelog sends are dropped (no broker)."""
    event = _ActingFor(SimpleNamespace(partition=partition))
    token = _current_event.set(weakref.ref(event))
    try:
        table.send_changelog = lambda *args, **kwargs: None
        for entries in batches:
            table.remember(entries)
    finally:
        _current_event.reset(token)


def test_ids_remembered_in_one_write_batch_are_found_by_one_multi_get(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mw = build({"METERWATCH_DATA_DIR": str(tmp_path)})
    table = mw.tables.seen_event_ids
    at = int(time.time() * 1000) - 60_000
    _remember(table, 3, [{"ws_1\x1fa": FirstSeen(at, 10), "ws_2\x1fb": FirstSeen(at + 1, 20)}])
    assert table.get_many(3, ["ws_1\x1fa", "ws_9\x1fz", "ws_2\x1fb"], at) == [b"%d,10" % at, None, b"%d,20" % (at + 1)]
    assert table.get_many(4, ["ws_1\x1fa"], at) == [None]  # another partition's database


def test_lookups_through_the_memtable_filters_find_every_id_and_only_those(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mw = build({"METERWATCH_DATA_DIR": str(tmp_path)})
    table = mw.tables.seen_event_ids
    at = int(time.time() * 1000) - 60_000
    rng = random.Random(7)
    batches = [
        {f"ws_{rng.randrange(500)}\x1fe{batch}-{i}": FirstSeen(at + batch, batch * 1000 + i) for i in range(1000)}
        for batch in range(20)
    ]
    _remember(table, 1, batches)
    remembered = {key: encode_first_seen(first) for entries in batches for key, first in entries.items()}
    asked = [*rng.sample(sorted(remembered), 5000), *(f"ws_{rng.randrange(500)}\x1fnew-{i}" for i in range(5000))]
    rng.shuffle(asked)
    expected = [remembered.get(key) for key in asked]
    # In the memtables (their bloom filters), then in flushed files (the files' filters).
    assert table.get_many(1, asked, at) == expected
    for family in table.data.segments(1).families.values():
        family.flush()
    assert table.get_many(1, asked, at) == expected


def test_lookups_on_the_lookup_thread_find_what_the_calling_thread_finds(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    mw = build({"METERWATCH_DATA_DIR": str(tmp_path)})
    table = mw.tables.seen_event_ids
    at = int(time.time() * 1000) - 60_000
    remembered = {f"ws_{i % 7}\x1fe{i}": FirstSeen(at, i) for i in range(3000)}
    _remember(table, 2, [remembered])
    asked = [*remembered, *(f"ws_{i % 7}\x1fnew-{i}" for i in range(3000))]
    read_on: list[str] = []
    read = IdSegments.get_many

    def get_many(segments, keys, since_ms):  # type: ignore[no-untyped-def]
        read_on.append(threading.current_thread().name)
        return read(segments, keys, since_ms)

    monkeypatch.setattr(IdSegments, "get_many", get_many)
    soon = [table.get_many_soon(partition, asked, at) for partition in (2, 5)]
    found = [lookup.result() for lookup in soon]
    assert len(read_on) == 2 and all(name.startswith("dedupe-lookups") for name in read_on)
    assert found[0] == table.get_many(2, asked, at) == [*(b"%d,%d" % (at, i) for i in range(3000)), *[None] * 3000]
    assert found[1] == [None] * len(asked)  # another partition's database
    assert read_on[2] == threading.current_thread().name


def test_recovery_puts_ids_in_their_segments_and_keeps_none_already_expired(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mw = build({"METERWATCH_DATA_DIR": str(tmp_path), "METERWATCH_DEDUPE_WINDOW": "1h"})
    table = mw.tables.seen_event_ids
    hour = 3_600_000
    now = int(time.time() * 1000)
    tp = TP(table.changelog_topic.get_topic_name(), 2)

    def chunk(offset: int, entries: dict[str, bytes]) -> SimpleNamespace:
        message = SimpleNamespace(
            tp=tp,
            partition=2,
            offset=offset,
            key=orjson.dumps(CHUNK_KEY_PREFIX + str(offset)),
            value=pack_chunk(entries),
        )
        return SimpleNamespace(key=CHUNK_KEY_PREFIX + str(offset), message=message)

    old, recent = now - 5 * hour, now - 10 * 60_000
    table.apply_changelog_batch(
        [
            chunk(0, {"ws\x1fold": b"%d,1" % old}),
            chunk(1, {"ws\x1fa": b"%d,2" % recent, "ws\x1fb": b"%d,3" % recent}),
        ]
    )
    # The partition's Kafka time is now "recent": the id first seen five hours before is gone.
    assert table.get_many(2, ["ws\x1fold", "ws\x1fa", "ws\x1fb"], old) == [None, b"%d,2" % recent, b"%d,3" % recent]
    assert table.data.persisted_offset(tp) == 1
    assert table.data.entries() == 2


def changelog_events(tp: TP, records: list[tuple[str, bytes | None]], first_offset: int = 0) -> list[SimpleNamespace]:
    """The changelog events recovery reads for ``records`` written in order."""
    return [
        SimpleNamespace(
            key=key,
            value=value,
            message=SimpleNamespace(tp=tp, partition=tp.partition, offset=offset, key=orjson.dumps(key), value=value),
        )
        for offset, (key, value) in enumerate(records, start=first_offset)
    ]


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 700))
def test_a_split_value_is_its_parts_in_the_order_its_head_names_them(value: bytes, part_bytes: int) -> None:
    parts, head = split_value(value, part_bytes)
    assert all(0 < len(part) <= part_bytes for _, part in parts)
    assert b"".join(dict(parts)[key] for key in part_keys(head)) == value
    assert head.startswith(HEAD_MARK)


def test_a_value_past_the_part_size_goes_out_in_parts_and_recovery_joins_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mw = build({"METERWATCH_DATA_DIR": str(tmp_path)})
    table = mw.tables.workspaces
    big = b'{"fin": "' + b"c" * (3 * VALUE_PART_BYTES) + b'"}'
    bigger = big + b" " * VALUE_PART_BYTES
    small = b'{"usage": 1}'

    first = table.changelog_records("ws_1", big)
    assert [len(value or b"") for _, value in first[:-1]] == [VALUE_PART_BYTES] * 3 + [len(big) - 3 * VALUE_PART_BYTES]
    assert first[-1][0] == "ws_1" and first[-1][1].startswith(HEAD_MARK)
    assert max(len(key.encode()) + len(value or b"") for key, value in first) < 300 * 1024
    # A new value replaces the old one's parts: new parts, its head, then the old parts deleted.
    second = table.changelog_records("ws_1", bigger)
    old_parts = [key for key, _ in first[:-1]]
    assert [key for key, value in second if value is None] == old_parts
    assert second[-len(old_parts) - 1][0] == "ws_1"
    # A value that fits again is one record, and the parts before it are deleted.
    third = table.changelog_records("ws_1", small)
    assert third[0] == ("ws_1", small)
    assert [value for _, value in third[1:]] == [None] * 5
    assert table.changelog_records("ws_1", small) == [("ws_1", small)]

    # Recovery, on a worker that never wrote them, reads the records in order.
    recovering = build({"METERWATCH_DATA_DIR": str(tmp_path / "other")}).tables.workspaces
    tp = TP(recovering.changelog_topic.get_topic_name(), 0)
    recovering.apply_changelog_batch(changelog_events(tp, first))
    assert recovering.data["ws_1"] == big
    assert not any(is_part_key(key) for key in recovering.data.keys())
    recovering.apply_changelog_batch(changelog_events(tp, second, first_offset=len(first)))
    assert recovering.data["ws_1"] == bigger
    recovering.apply_changelog_batch(changelog_events(tp, third, first_offset=len(first) + len(second)))
    assert recovering.data["ws_1"] == small
    assert recovering._recovered_parts == {}  # noqa: SLF001

    # A head whose parts the changelog lost (never the case unless records are deleted by hand).
    broken = build({"METERWATCH_DATA_DIR": str(tmp_path / "broken")}).tables.workspaces
    with pytest.raises(MissingValuePart, match="names 1 part"):
        broken.apply_changelog_batch(changelog_events(tp, first[1:]))


def test_a_large_value_set_through_the_table_goes_out_in_parts_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    table = build({"METERWATCH_DATA_DIR": str(tmp_path)}).tables.contract_usage
    sent: list[tuple[int | None, str, bytes | None]] = []
    table._send_one = lambda partition, key, value, *args: sent.append((partition, key, value)) or len(sent)  # type: ignore[method-assign]  # noqa: SLF001
    value = b"[" + b"1," * VALUE_PART_BYTES + b"1]"
    assert table.send_changelog(5, "contract_1", value) == 4  # the last record's send, to await
    assert [(partition, is_part_key(key)) for partition, key, _ in sent] == [(5, True)] * 3 + [(5, False)]
    assert sent[-1][2].startswith(HEAD_MARK)
    sent.clear()
    table.send_changelog(5, "contract_1", b"[1]")
    assert [value for _, _, value in sent] == [b"[1]", None, None, None]
