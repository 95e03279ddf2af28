"""The dedupe store's databases under one memory budget (streams/seen_ids_store.py)."""

from __future__ import annotations

import random

from meterwatch.streams.seen_ids_store import SharedCacheRocksDBOptions
from rocksdict import WriteBatch

KIB = 1024


def test_many_ids_over_several_partitions_stay_within_the_cache_and_are_all_found(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A tiny budget, so a few hundred thousand ids are many times what it holds.
    options = SharedCacheRocksDBOptions(
        memtable_budget=256 * KIB,
        block_cache_size=512 * KIB,
        write_buffer_size=64 * KIB,
        max_write_buffer_number=2,
        target_file_size_base=256 * KIB,
        ttl=3600,
    )
    dbs = [options.open(tmp_path / f"p{p}.db") for p in range(4)]
    rng = random.Random(7)
    written: list[list[bytes]] = [[] for _ in dbs]
    for batch in range(300):
        p = batch % len(dbs)
        keys = [b'"ws_%d\\u001f%032x"' % (batch % 7, rng.getrandbits(128)) for _ in range(500)]
        # The hot path: one multi-get for a batch's ids (new ones), then one write batch.
        assert dbs[p][keys] == [None] * len(keys)
        write = WriteBatch(raw_mode=True)
        for key in keys:
            write.put(key, b"1764000000000,%d" % batch)
        dbs[p].write(write)
        written[p].extend(keys)
    for db in dbs:
        db.flush()
    # Index and filter blocks are in the cache: an open file holds a small fixed part beside it,
    # not an index and filter that grow with the ids in the file.
    files = sum(len(db.live_files()) for db in dbs)
    table_readers = sum(db.property_int_value("rocksdb.estimate-table-readers-mem") for db in dbs)
    assert table_readers < 3 * KIB * files
    # What is pinned (the top level of each file's index and filter, the newest files' blocks)
    # can take the cache a little past its capacity, never far.
    assert options.cache.get_usage() <= 1.25 * 512 * KIB
    for db, keys in zip(dbs, written, strict=True):
        values = db[keys]
        assert all(value is not None and value.startswith(b"1764000000000,") for value in values)
    assert dbs[0][[b'"ws_0\\u001fnever"']] == [None]
    for db in dbs:
        db.close()
