"""The dedupe store's RocksDB databases, one per partition, under one memory budget.

Faust opens every partition's database with a block cache of its own and keeps each SST file's
index and filter outside any cache, so a worker's RocksDB memory grows with the partitions it
holds and with the ids on disk. Here all the partitions of a worker share one block cache of a
fixed capacity; their memtables are charged to that cache (a write buffer manager); and index
and filter blocks live in it too, split into small partitions under a pinned top level, so the
ones a lookup needs are loaded and the rest can be evicted. RocksDB memory then stays at about
the cache's capacity however many ids are on disk; ids past what the cache holds cost reads
from the files (the OS page cache), not memory of the worker.

Filters are full bloom filters at 10 bits a key (about 1 % false positives): a lookup of a new
id, the common case, rarely reads a data block.

Ids expire by the clock repeats are judged by, the Kafka time of the events (``core/dedupe.py``):
each partition's database keeps its ids in column families of one dedupe window each, named by
their bounds, and drops a column family whole once the partition's Kafka time is two windows
past its end. The partition's Kafka time is the latest first-seen time written, never ahead of
the worker's clock (a producer's clock set years ahead must not expire every id at once).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore

from ...core.dedupe import Segment, can_judge, is_expired, segment_for
from ...logs import FAUST_SERVICES_LOG

log = logging.getLogger(__name__)

# The fields of an entry of IdSegments.write
_KEY, _AT_MS, _VALUE = itemgetter(0), itemgetter(1), itemgetter(2)

BLOOM_BITS_PER_KEY = 10
# A memtable's own bloom filter, as a share of its size (charged to it): about 25 bits an id.
MEMTABLE_BLOOM_RATIO = 0.05
# Index and filter partitions (and their reads) of 4 KiB, like data blocks.
METADATA_BLOCK_BYTES = 4 * 1024


class SharedCacheRocksDBOptions(RocksDBOptions):
    """Faust's options for one table, with one block cache and one write buffer manager shared
    by every partition's database.

    ``block_cache_size`` is the capacity of the shared cache, for every partition together;
    ``memtable_budget`` (at most that capacity) is what all the partitions' memtables may hold
    before the largest is flushed; it is charged to the cache.
    """

    def __init__(self, *, memtable_budget: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memtable_budget = memtable_budget
        self.cache = rocksdict.Cache(self.block_cache_size)
        self.write_buffer_manager = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            memtable_budget, False, self.cache
        )

    def open(self, path: Path, *, read_only: bool = False) -> rocksdict.Rdict:
        """The database at ``path`` with every column family it has, or a new one. A database
        of another layout (ids in the default column family, values carrying RocksDB's
        wall-clock TTL suffix) is deleted first; the changelog restores what it held."""
        db = self._open(path)
        if db.get(LAYOUT_KEY) is None:
            if _holds_anything(db, path, self.as_options()):
                log.info("dedupe store %s has an older layout; deleting it, the changelog restores it", path.name)
                db.close()
                rocksdict.Rdict.destroy(str(path), self.as_options())
                db = self._open(path)
            db.put(LAYOUT_KEY, LAYOUT)
        return db

    def _open(self, path: Path) -> rocksdict.Rdict:
        options = self.as_options()
        families = rocksdict.Rdict.list_cf(str(path), options) if path.exists() else []
        db = rocksdict.Rdict(
            str(path),
            options=options,
            column_families={name: self.as_options() for name in families if name != "default"},
        )
        db.set_read_options(rocksdict.ReadOptions())
        return db

    def as_options(self) -> rocksdict.Options:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        if self.max_open_files is not None:
            options.set_max_open_files(self.max_open_files)
        options.set_write_buffer_size(self.write_buffer_size)
        options.set_max_write_buffer_number(self.max_write_buffer_number)
        options.set_target_file_size_base(self.target_file_size_base)
        options.set_write_buffer_manager(self.write_buffer_manager)
        # Nearly every lookup is of a new id; most ids a lookup could find are still in the
        # memtables, so without a filter of their own each lookup searches them key by key.
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
        options.set_memtable_whole_key_filtering(True)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_bloom_filter(BLOOM_BITS_PER_KEY, False)
        table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(METADATA_BLOCK_BYTES)
        table.set_cache_index_and_filter_blocks(True)
        # The top level of each file's index and filter, and the (few, small) blocks of the
        # files just flushed, stay in the cache; they are what every lookup reads first.
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        return options


# Marks a database whose ids live in segment column families. Faust keeps its changelog offset
# in the default column family, beside it.
LAYOUT_KEY = b"__meterwatch\x00layout__"
LAYOUT = b"segments/1"
_SEGMENT_PREFIX = "ids-"


def _holds_anything(db: rocksdict.Rdict, path: Path, options: rocksdict.Options) -> bool:
    if len(rocksdict.Rdict.list_cf(str(path), options)) > 1:
        return True
    it = db.iter()
    it.seek_to_first()
    return it.valid()


def _segment_name(segment: Segment) -> str:
    return f"{_SEGMENT_PREFIX}{segment.start_ms}-{segment.end_ms}"


def _parse_segment(name: str) -> Segment | None:
    if not name.startswith(_SEGMENT_PREFIX):
        return None
    start, end = name[len(_SEGMENT_PREFIX) :].split("-")
    return Segment(int(start), int(end))


class IdSegments:
    """One partition's ids, in column families of one window of Kafka time each."""

    def __init__(self, db: rocksdict.Rdict, options: SharedCacheRocksDBOptions, window_ms: int) -> None:
        self.db = db
        self.options = options
        self.window_ms = window_ms
        # The partition's Kafka time: the latest first-seen time written, capped at the clock.
        self.stream_ms = 0
        self.families: dict[Segment, rocksdict.Rdict] = {}
        for name in rocksdict.Rdict.list_cf(db.path(), options.as_options()):
            segment = _parse_segment(name)
            if segment is not None:
                self.families[segment] = db.get_column_family(name)
        self._newest_first = sorted(self.families, reverse=True)

    def get_many(self, keys: list[bytes], since_ms: int) -> list[bytes | None]:
        """The stored values of ``keys``, newest segment first; segments whose ids cannot judge
        an event received at ``since_ms`` or later are not read."""
        window_ms = self.window_ms
        readable = [self.families[s] for s in self._newest_first if can_judge(s, since_ms, window_ms)]
        if not readable:
            return [None] * len(keys)
        found: list[bytes | None] = readable[0][keys]
        for family in readable[1:]:
            missing = [i for i, value in enumerate(found) if value is None]
            if not missing:
                break
            for i, value in zip(missing, family[[keys[i] for i in missing]], strict=True):
                if value is not None:
                    found[i] = value
        return found

    def write(self, entries: Sequence[tuple[bytes, int, bytes]]) -> None:
        """Store ``(key, first seen ms, value)`` entries, each in the segment of its time, in one
        write batch, then drop the segments the partition's Kafka time has left behind. An entry
        already that far behind is not kept."""
        if not entries:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        window_ms = self.window_ms
        newest = self.stream_ms
        times = list(map(_AT_MS, entries))
        earliest, latest = min(times), max(times)
        segment = segment_for(earliest, window_ms)
        if latest < segment.end_ms:
            # The common case, every id of one segment: put them without a Python frame each.
            if not is_expired(segment, newest, window_ms):
                puts = map(batch.put, map(_KEY, entries), map(_VALUE, entries), repeat(self._handle(segment)))
                deque(puts, maxlen=0)
                newest = max(newest, latest)
        else:
            start = end = 0
            handle = None
            put = batch.put
            for key, at_ms, value in entries:
                # Look the segment up again only when an id is not of the last one.
                if not start <= at_ms < end:
                    segment = segment_for(at_ms, window_ms)
                    start, end = segment
                    handle = None if is_expired(segment, self.stream_ms, window_ms) else self._handle(segment)
                if handle is None:
                    continue
                put(key, value, handle)
                if at_ms > newest:
                    newest = at_ms
        self.db.write(batch)
        self._advance(newest)

    def delete(self, key: bytes) -> None:
        for family in self.families.values():
            family.delete(key)

    def entries(self) -> int:
        """About how many ids are held (RocksDB's estimate)."""
        return sum(int(f.property_int_value("rocksdb.estimate-num-keys") or 0) for f in self.families.values())

    def memtable_bytes(self) -> int:
        return sum(int(f.property_int_value("rocksdb.cur-size-all-mem-tables") or 0) for f in self.families.values())

    def _handle(self, segment: Segment) -> Any:
        if segment not in self.families:
            self.families[segment] = self.db.create_column_family(_segment_name(segment), self.options.as_options())
            self._newest_first = sorted(self.families, reverse=True)
        return self.db.get_column_family_handle(_segment_name(segment))

    def _advance(self, newest_ms: int) -> None:
        stream_ms = min(newest_ms, int(time.time() * 1000))
        if stream_ms <= self.stream_ms:
            return
        self.stream_ms = stream_ms
        expired = [s for s in self.families if is_expired(s, stream_ms, self.window_ms)]
        for segment in expired:
            del self.families[segment]
            self.db.drop_column_family(_segment_name(segment))
        if expired:
            self._newest_first = sorted(self.families, reverse=True)


class SeenIdsStore(RocksDBStore):
    """Faust's RocksDB store, its partitions' databases opened with :class:`SharedCacheRocksDBOptions`."""

    logger = FAUST_SERVICES_LOG
    rocksdb_options: SharedCacheRocksDBOptions

    def __init__(self, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        options = dict(options or {})
        memtable_budget = options.pop("memtable_budget")
        self.window_ms = options.pop("window_ms")
        super().__init__(*args, options=options, **kwargs)
        self.rocksdb_options = SharedCacheRocksDBOptions(
            memtable_budget=memtable_budget, **self.options, use_rocksdict=True
        )
        self._segments: dict[int, IdSegments] = {}

    def segments(self, partition: int) -> IdSegments:
        """``partition``'s ids, its database opened if it is not yet."""
        db = self._db_for_partition(partition)
        segments = self._segments.get(partition)
        if segments is None or segments.db is not db:
            segments = self._segments[partition] = IdSegments(db, self.rocksdb_options, self.window_ms)
        return segments

    def apply_changelog_batch(self, batch: Iterable[Any], to_key: Any, to_value: Any) -> None:
        """Changelog entries (chunks already unpacked) into their partitions' segments, then
        the offsets read, as Faust's store does for plain keys."""
        writes: dict[int, list[tuple[bytes, int, bytes]]] = {}
        offsets: dict[Any, int] = {}
        for event in batch:
            message = event.message
            offsets[message.tp] = max(message.offset, offsets.get(message.tp, -1))
            if message.value is None:
                self.segments(message.partition).delete(message.key)
                continue
            at_ms = int(message.value.split(b",", 1)[0])
            writes.setdefault(message.partition, []).append((message.key, at_ms, message.value))
        for partition, entries in writes.items():
            self.segments(partition).write(entries)
        for tp, offset in offsets.items():
            self.set_persisted_offset(tp, offset)

    def revoke_partitions(self, table: Any, tps: Any) -> None:
        for tp in tps:
            if tp.topic in table.changelog_topic.topics:
                self._segments.pop(tp.partition, None)
        super().revoke_partitions(table, tps)

    def reset_state(self) -> None:
        self._segments.clear()
        super().reset_state()

    def close_databases(self) -> None:
        """Close every open database; each is opened again when next used. RocksDB keeps
        refusing writes after one failed (a full disk, say) until its database is reopened,
        which also replays its write-ahead log to the last whole write."""
        self._segments.clear()
        dbs = list(self._dbs.values())
        self._dbs.clear()
        for db in dbs:
            try:
                db.close()
            except Exception as error:  # a database in error may refuse to flush on close
                log.warning("dedupe store: closing a database failed (%s); it is opened again when next used", error)

    async def stop(self) -> None:
        self._segments.clear()
        await super().stop()

    def entries(self) -> int:
        """About how many ids the open partitions hold."""
        total = 0
        for partition in list(self._dbs):
            try:
                total += self.segments(partition).entries()
            except Exception:  # closed mid-rebalance
                continue
        return total

    def memory(self) -> dict[str, int]:
        """Bytes of RocksDB memory, for every open partition together: the shared block cache
        (its blocks and the memtables charged to it), the memtables alone, and what the open
        files hold outside the cache."""
        memtables = table_readers = 0
        for partition in list(self._dbs):
            try:
                segments = self.segments(partition)
                memtables += segments.memtable_bytes()
                table_readers += sum(
                    int(f.property_int_value("rocksdb.estimate-table-readers-mem") or 0)
                    for f in segments.families.values()
                )
            except Exception:  # closed mid-rebalance
                continue
        return {
            "rocksdb_block_cache": self.rocksdb_options.cache.get_usage(),
            "rocksdb_memtables": memtables,
            "rocksdb_table_readers": table_readers,
        }
