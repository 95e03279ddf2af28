"""The dedupe store: event ids kept on disk, written to their changelog a batch at a time.

A plain table sends one changelog record per key, so one per counted event: a send task each,
the largest cost of the hot path. Here the ids a batch remembers for one partition travel as
one record, a *chunk*, and recovery unpacks chunks back into the ids they carry. Chunk keys are
random, so compaction never drops a chunk for a later one (a replayed batch may carry fewer
ids); the changelog's time retention ends them (``streams/runtime/tables.py``).
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate, count
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from operator import add, itemgetter
from typing import Any

from faust.streams import current_event
from faust.types import EventT
from yarl import URL

from ...core.dedupe import FIRST_SEEN_FORMAT, FirstSeen
from .durable_table import ChangelogRecord, DurableTable, fast_key_encoder, json_string
from .seen_ids_store import SeenIdsStore

# Identifiers never hold C0 controls (models.common), so these cannot occur inside a key or value.
# The chunk's key goes through the table's key serializer like any key; its value is raw bytes.
CHUNK_KEY_PREFIX = "\x00chunk:"
_FIELD = b"\t"
_ENTRY = b"\n"
_AT_MS = itemgetter(0)  # FirstSeen.at_ms


# Well under the broker's default 1 MB message size, with room for the record's own overhead.
MAX_CHUNK_BYTES = 256 * 1024


def pack_chunk(entries: Mapping[str, bytes]) -> bytes:
    return _ENTRY.join(key.encode() + _FIELD + value for key, value in entries.items())


def pack_chunks(entries: Mapping[str, bytes], max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[bytes]:
    """``entries`` packed into as few chunks as fit ``max_bytes`` each (an entry never splits)."""
    return pack_entries((pack_entry(key, value) for key, value in entries.items()), max_bytes)


def pack_entry(key: str, value: bytes) -> bytes:
    return key.encode() + _FIELD + value


def pack_entries(entries: Iterable[bytes], max_bytes: int = MAX_CHUNK_BYTES) -> Iterator[bytes]:
    """Packed entries (``pack_entry``) joined into as few chunks as fit ``max_bytes`` each, in
    order: each chunk takes entries while they fit (an entry never splits, so one larger than
    ``max_bytes`` goes alone)."""
    entries = entries if isinstance(entries, list) else list(entries)
    # ends[i]: the bytes of entries[:i + 1], each with its separator; a chunk from entry s to e
    # is ends[e] - ends[s - 1] - 1 bytes long.
    ends = list(map(add, accumulate(map(len, entries)), count(1)))
    start, before = 0, 0
    while start < len(entries):
        end = max(bisect_right(ends, before + max_bytes, start), start + 1)  # entries[start:end]
        yield _ENTRY.join(entries[start:end])
        start, before = end, ends[end - 1]


def unpack_chunk(raw: bytes) -> Iterator[tuple[str, bytes]]:
    for entry in raw.split(_ENTRY):
        key, value = entry.split(_FIELD, 1)
        yield key.decode(), value


@dataclass(frozen=True, slots=True)
class _Unpacked:
    key: str
    message: ChangelogRecord


def is_chunk(event: EventT) -> bool:
    return isinstance(event.key, str) and event.key.startswith(CHUNK_KEY_PREFIX)


def unpack_changelog(batch: Iterable[EventT], encode_key: Callable[[str], bytes]) -> Iterator[Any]:
    """Changelog events with every chunk replaced by one event per id it carries, each keyed
    as the table itself would have keyed it (``encode_key``)."""
    for event in batch:
        if not is_chunk(event):
            yield event
            continue
        message = event.message
        if message.value is None:
            continue  # a tombstone for a chunk: nothing to restore
        for key, value in unpack_chunk(message.value):
            record = ChangelogRecord(message.tp, message.partition, message.offset, encode_key(key), value)
            yield _Unpacked(key, record)


class SeenEventIdsTable(DurableTable):
    joins_parts = False  # its records are chunks of at most MAX_CHUNK_BYTES
    _encoder: Callable[[str], bytes] | None = None
    _lookups: ThreadPoolExecutor | None = None

    def _new_store_by_url(self, url: str | URL) -> SeenIdsStore:
        """Faust's RocksDB store, with every partition's database under one memory budget
        (``streams/runtime/seen_ids_store.py``)."""
        return SeenIdsStore(
            url,
            self.app,
            self,
            table_name=self.name,
            key_type=self.key_type,
            key_serializer=self.key_serializer,
            value_serializer=self.value_serializer,
            value_type=self.value_type,
            loop=self.loop,
            options=self.options,
        )

    def memory(self) -> dict[str, int]:
        return self.data.memory()

    def get_many(self, partition: int, keys: list[str], since_ms: int) -> list[bytes | None]:
        """The stored values of ``keys`` (None where absent), read from ``partition``'s RocksDB
        database in one multi-get per segment rather than one table lookup per key; ``since_ms``
        is the earliest Kafka time of the events asking (older segments cannot judge them)."""
        return self.data.segments(partition).get_many(self._encode_keys(keys), since_ms)

    def get_many_soon(self, partition: int, keys: list[str], since_ms: int) -> Future[list[bytes | None]]:
        """``get_many``, its reads run on the table's lookup thread. RocksDB's multi-get lets go
        of the GIL while it reads, so the caller's own work goes on meanwhile. The caller waits
        for the result before it next awaits: a rebalance then never closes a database that is
        being read."""
        segments = self.data.segments(partition)  # opened here, on the event loop's thread
        lookups = self._lookups
        if lookups is None:
            lookups = self._lookups = ThreadPoolExecutor(1, thread_name_prefix="dedupe-lookups")
        return lookups.submit(segments.get_many, self._encode_keys(keys), since_ms)

    def _encode_keys(self, keys: Iterable[str]) -> list[bytes]:
        """``keys`` in the store's key encoding (``fast_key_encoder`` of Faust's own)."""
        encoder = self._encoder
        if encoder is None:
            encoder = self._encoder = fast_key_encoder(self.data._encode_key)  # noqa: SLF001
        if encoder is json_string:
            # json_string of each key, without a Python frame per key
            return list(map(str.encode, map(encode_basestring, keys)))
        return list(map(encoder, keys))

    def remember(self, entries: Mapping[str, FirstSeen]) -> None:
        """Store ``entries`` locally and send them to the changelog in as few records as fit.

        Every entry belongs to the partition of the current event (``acting_for``); the entries
        go to that partition's database in one write batch and to its changelog in chunks,
        like the entries' own records would have.
        """
        if not entries:
            return
        event = current_event()
        assert event is not None, "remember() runs acting for an event of the partition"
        partition = event.message.partition
        # In key order: a write batch whose consecutive keys are neighbours in the memtable's
        # skip list goes in faster: about a quarter less time over 100,000 workspaces, sorting
        # included.
        keys = sorted(entries)
        firsts = list(map(entries.__getitem__, keys))
        values = list(map(FIRST_SEEN_FORMAT.__mod__, firsts))  # encode_first_seen of each
        # The local store only; the chunks below are the changelog. Built without a Python
        # frame per entry: (encoded key, first seen ms, value) and pack_entry's bytes.
        stored = list(zip(self._encode_keys(keys), map(_AT_MS, firsts), values, strict=True))
        self.data.segments(partition).write(stored)
        packed = list(map(_FIELD.join, zip(map(str.encode, keys), values, strict=True)))
        for chunk in pack_entries(packed):
            self.send_changelog(partition, CHUNK_KEY_PREFIX + uuid.uuid4().hex, chunk)

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        super().apply_changelog_batch(list(unpack_changelog(batch, self.data._encode_key)))  # noqa: SLF001
