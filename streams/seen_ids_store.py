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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rocksdict
from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore

from ..logs import FAUST_SERVICES_LOG

BLOOM_BITS_PER_KEY = 10
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
        access = rocksdict.AccessType.read_write() if self.ttl is None else rocksdict.AccessType.with_ttl(self.ttl)
        db = rocksdict.Rdict(str(path), options=self.as_options(), access_type=access)
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


class SeenIdsStore(RocksDBStore):
    """Faust's RocksDB store, its partitions' databases opened with :class:`SharedCacheRocksDBOptions`."""

    logger = FAUST_SERVICES_LOG
    rocksdb_options: SharedCacheRocksDBOptions

    def __init__(self, *args: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> None:
        options = dict(options or {})
        memtable_budget = options.pop("memtable_budget")
        super().__init__(*args, options=options, **kwargs)
        self.rocksdb_options = SharedCacheRocksDBOptions(
            memtable_budget=memtable_budget, **self.options, use_rocksdict=True
        )

    def memory(self) -> dict[str, int]:
        """Bytes of RocksDB memory, for every open partition together: the shared block cache
        (its blocks and the memtables charged to it), the memtables alone, and what the open
        files hold outside the cache."""
        memtables = table_readers = 0
        for db in list(self._dbs.values()):
            try:
                memtables += int(db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)
                table_readers += int(db.property_int_value("rocksdb.estimate-table-readers-mem") or 0)
            except Exception:  # closed mid-rebalance
                continue
        return {
            "rocksdb_block_cache": self.rocksdb_options.cache.get_usage(),
            "rocksdb_memtables": memtables,
            "rocksdb_table_readers": table_readers,
        }
