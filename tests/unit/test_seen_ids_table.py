"""Chunks of event ids in the dedupe changelog: packed once per batch, unpacked on recovery."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.streams.runtime.seen_ids_table import (
    CHUNK_KEY_PREFIX,
    MAX_CHUNK_BYTES,
    pack_chunk,
    pack_chunks,
    pack_entries,
    unpack_changelog,
    unpack_chunk,
)

# What reaches the store: "{workspace}\x1f{event_id}" keys (identifiers hold no C0 controls
# other than the separator meterwatch puts there) and "at_ms,position" values.
identifier = st.text(st.characters(blacklist_categories=("Cs",), min_codepoint=0x20), min_size=1, max_size=40)
seen_key = st.builds(lambda ws, ev: f"{ws}\x1f{ev}", identifier, identifier)
first_seen = st.builds(lambda at, pos: b"%d,%d" % (at, pos), st.integers(0, 2**48), st.integers(0, 2**60))


@given(st.dictionaries(seen_key, first_seen, min_size=1, max_size=50))
def test_a_chunk_unpacks_to_exactly_what_was_packed(entries: dict[str, bytes]) -> None:
    assert dict(unpack_chunk(pack_chunk(entries))) == entries


def changelog_event(key: str, value: bytes | None, offset: int) -> SimpleNamespace:
    message = SimpleNamespace(tp=("seen", 3), partition=3, offset=offset, key=orjson.dumps(key), value=value)
    return SimpleNamespace(key=key, message=message)


def test_recovery_sees_one_record_per_id_at_the_chunk_offset_and_plain_records_unchanged() -> None:
    plain = changelog_event("ws\x1fold", b"1,2", offset=7)
    chunk = changelog_event(
        CHUNK_KEY_PREFIX + "c1", pack_chunk({"ws\x1fa": b"10,1024", "ws\x1fb": b"10,1025"}), offset=8
    )
    chunk_tombstone = changelog_event(CHUNK_KEY_PREFIX + "c0", None, offset=9)
    unpacked = list(unpack_changelog([plain, chunk, chunk_tombstone], encode_key=orjson.dumps))
    assert unpacked[0] is plain
    assert [(e.key, e.message.key, e.message.value, e.message.offset, e.message.partition) for e in unpacked[1:]] == [
        ("ws\x1fa", b'"ws\\u001fa"', b"10,1024", 8, 3),
        ("ws\x1fb", b'"ws\\u001fb"', b"10,1025", 8, 3),
    ]


@given(st.dictionaries(seen_key, first_seen, min_size=1, max_size=200), st.integers(60, 2000))
def test_chunks_fit_their_size_and_together_carry_every_entry_once(entries: dict[str, bytes], max_bytes: int) -> None:
    chunks = list(pack_chunks(entries, max_bytes))
    longest_entry = max(len(k.encode()) + 1 + len(v) for k, v in entries.items())
    assert all(len(chunk) <= max(max_bytes, longest_entry) for chunk in chunks)
    unpacked = [pair for chunk in chunks for pair in unpack_chunk(chunk)]
    assert dict(unpacked) == entries and len(unpacked) == len(entries)


def greedy_chunks(entries: list[bytes], max_bytes: int) -> list[bytes]:
    """The chunks taken one entry at a time: a chunk takes the next entry while it fits."""
    chunks: list[list[bytes]] = []
    size = 0
    for entry in entries:
        if not chunks or size + len(entry) + 1 > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += len(entry) + 1
    return [b"\n".join(chunk) for chunk in chunks]


@given(st.lists(st.binary(min_size=0, max_size=80), max_size=60), st.integers(1, 400))
def test_entries_are_packed_as_taking_one_at_a_time_would_pack_them(entries: list[bytes], max_bytes: int) -> None:
    assert list(pack_entries(entries, max_bytes)) == greedy_chunks(entries, max_bytes)
    assert list(pack_entries(iter(entries), max_bytes)) == greedy_chunks(entries, max_bytes)


def test_a_large_batch_of_ids_goes_out_in_records_under_the_broker_limit() -> None:
    entries = {f"ws_{i % 4}\x1f{i:032x}": b"1764000000000,%d" % (i * 1024) for i in range(40_000)}
    chunks = list(pack_chunks(entries))
    assert len(chunks) > 1 and all(len(chunk) <= MAX_CHUNK_BYTES for chunk in chunks)
