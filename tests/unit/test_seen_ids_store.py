"""The dedupe store's databases under one memory budget, and their ids kept by Kafka time
(streams/runtime/seen_ids_store.py)."""

from __future__ import annotations

import random
import time

import rocksdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterwatch.core.dedupe import FirstSeen, decode_first_seen, encode_first_seen, is_repeat
from meterwatch.streams.runtime.seen_ids_store import LAYOUT, LAYOUT_KEY, IdSegments, SharedCacheRocksDBOptions
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


WINDOW_MS = 1_000


def small_options() -> SharedCacheRocksDBOptions:
    return SharedCacheRocksDBOptions(
        memtable_budget=256 * KIB,
        block_cache_size=512 * KIB,
        write_buffer_size=64 * KIB,
        max_write_buffer_number=2,
        target_file_size_base=256 * KIB,
    )


def stored(segments: IdSegments, keys: list[bytes], since_ms: int = 0) -> dict[bytes, bytes]:
    return {k: v for k, v in zip(keys, segments.get_many(keys, since_ms), strict=True) if v is not None}


def compact_everything(segments: IdSegments) -> None:
    for family in segments.families.values():
        family.flush()
        family.compact_range(None, None)


def test_ids_outlive_the_wall_clock_and_expire_when_their_partitions_kafka_time_moves_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    segments = IdSegments(options.open(tmp_path / "p0.db"), options, WINDOW_MS)
    # A worker catching up an hour behind: the events' Kafka time is well behind the clock.
    base = int(time.time() * 1000) - 3_600_000
    base += 100 - base % WINDOW_MS  # 100 ms into a window
    segments.write([(b"a", base, b"%d,1" % base), (b"b", base + 10, b"%d,2" % (base + 10))])
    time.sleep(3 * WINDOW_MS / 1000)  # three windows of wall clock pass
    compact_everything(segments)
    assert stored(segments, [b"a", b"b", b"c"]) == {b"a": b"%d,1" % base, b"b": b"%d,2" % (base + 10)}

    # Kafka time moves one window on: the ids can still judge events, so they stay.
    segments.write([(b"c", base + WINDOW_MS, b"%d,3" % (base + WINDOW_MS))])
    assert set(stored(segments, [b"a", b"b", b"c"])) == {b"a", b"b", b"c"}
    # Three windows on, the first ids' segment is two windows behind its end and dropped whole.
    later = base + 3 * WINDOW_MS
    segments.write([(b"d", later, b"%d,4" % later)])
    assert set(stored(segments, [b"a", b"b", b"c", b"d"])) == {b"c", b"d"}
    assert all(segment.end_ms + 2 * WINDOW_MS > later for segment in segments.families)
    assert rocksdict.Rdict.list_cf(str(tmp_path / "p0.db"), options.as_options()) == [
        "default",
        *sorted(f"ids-{s.start_ms}-{s.end_ms}" for s in segments.families),
    ]


def test_an_id_that_arrives_already_two_windows_behind_is_not_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    segments = IdSegments(options.open(tmp_path / "p0.db"), options, WINDOW_MS)
    now = int(time.time() * 1000) - 60_000
    segments.write([(b"new", now, b"%d,1" % now)])
    old = now - 3 * WINDOW_MS
    segments.write([(b"old", old, b"%d,2" % old), (b"also-new", now, b"%d,3" % now)])
    segments.write([(b"old-alone", old, b"%d,4" % old), (b"old-too", old + 1, b"%d,5" % (old + 1))])
    assert set(stored(segments, [b"new", b"old", b"also-new", b"old-alone", b"old-too"])) == {b"new", b"also-new"}


def test_a_kafka_time_ahead_of_the_clock_expires_nothing_early(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    segments = IdSegments(options.open(tmp_path / "p0.db"), options, WINDOW_MS)
    now = int(time.time() * 1000)
    segments.write([(b"a", now - 100, b"%d,1" % (now - 100))])
    # A producer whose clock is ten years ahead: the partition's time stops at the worker's clock.
    future = now + 10 * 365 * 24 * 3_600_000
    segments.write([(b"b", future, b"%d,2" % future)])
    assert set(stored(segments, [b"a", b"b"])) == {b"a", b"b"}


def test_a_lookup_skips_segments_too_old_to_judge_its_events(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    segments = IdSegments(options.open(tmp_path / "p0.db"), options, WINDOW_MS)
    base = int(time.time() * 1000) - 60_000
    base -= base % WINDOW_MS
    segments.write([(b"a", base, b"%d,1" % base), (b"b", base + WINDOW_MS, b"%d,2" % (base + WINDOW_MS))])
    assert set(stored(segments, [b"a", b"b"], since_ms=base + WINDOW_MS)) == {b"a", b"b"}
    # Events two windows after "a"'s segment ended: nothing in it could make them repeats.
    assert set(stored(segments, [b"a", b"b"], since_ms=base + 2 * WINDOW_MS)) == {b"b"}


def test_the_newest_segment_answers_for_an_id_written_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    segments = IdSegments(options.open(tmp_path / "p0.db"), options, WINDOW_MS)
    base = int(time.time() * 1000) - 60_000
    segments.write([(b"a", base, b"%d,1" % base)])
    segments.write([(b"a", base + WINDOW_MS, b"%d,9" % (base + WINDOW_MS))])
    assert stored(segments, [b"a"]) == {b"a": b"%d,9" % (base + WINDOW_MS)}


def test_segments_survive_a_reopen(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    path = tmp_path / "p0.db"
    db = options.open(path)
    base = int(time.time() * 1000) - 60_000
    segments = IdSegments(db, options, WINDOW_MS)
    segments.write([(b"a", base, b"%d,1" % base), (b"b", base + WINDOW_MS, b"%d,2" % (base + WINDOW_MS))])
    db.put(b"__faust\x00offset__", b"41")
    del segments
    db.close()
    reopened = IdSegments(options.open(path), options, WINDOW_MS)
    assert set(stored(reopened, [b"a", b"b"])) == {b"a", b"b"}
    assert reopened.db.get(b"__faust\x00offset__") == b"41"


def test_a_database_of_the_wall_clock_ttl_layout_is_deleted_for_the_changelog_to_restore(tmp_path) -> None:  # type: ignore[no-untyped-def]
    options = small_options()
    path = tmp_path / "p0.db"
    old = rocksdict.Rdict(str(path), options=options.as_options(), access_type=rocksdict.AccessType.with_ttl(3600))
    old.put(b'"ws_1\\u001fevt"', b"1764000000000,5")
    old.put(b"__faust\x00offset__", b"99")
    old.close()
    db = options.open(path)
    assert db.get(LAYOUT_KEY) == LAYOUT
    assert db.get(b"__faust\x00offset__") is None  # recovery starts from the changelog's beginning
    assert [key for key in db.keys() if key != LAYOUT_KEY] == []
    db.close()
    # A database of the current layout is kept as it is.
    db = options.open(path)
    db.put(b"__faust\x00offset__", b"7")
    db.close()
    assert options.open(path).get(b"__faust\x00offset__") == b"7"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"a", b"b", b"c", b"d"]),  # the event's id
            st.integers(-WINDOW_MS + 1, 2 * WINDOW_MS),  # its Kafka time, from the partition's latest
            st.none() | st.integers(0, 40),  # or a replay of an earlier delivery, as it was
        ),
        min_size=1,
        max_size=40,
    )
)
def test_segments_judge_every_event_as_a_store_that_never_forgets(tmp_path_factory, events) -> None:  # type: ignore[no-untyped-def]
    """For events at most one window behind their partition's Kafka time, judging repeats
    against the segmented store gives what a store keeping every id for ever gives."""
    options = small_options()
    segments = IdSegments(options.open(tmp_path_factory.mktemp("ids") / "p.db"), options, WINDOW_MS)
    forever: dict[bytes, FirstSeen] = {}
    latest = int(time.time() * 1000) - 24 * 3_600_000
    deliveries: list[tuple[bytes, int, int]] = []  # (id, position, Kafka time)
    for key, step, replay in events:
        if replay is not None and replay < len(deliveries) and deliveries[replay][2] > latest - WINDOW_MS:
            key, position, now = deliveries[replay]
        else:
            position, now = len(deliveries), latest + step
        deliveries.append((key, position, now))
        latest = max(latest, now)
        kept = decode_first_seen(segments.get_many([key], now)[0])
        repeat = is_repeat(kept, position, now, WINDOW_MS)
        assert repeat == is_repeat(forever.get(key), position, now, WINDOW_MS)
        # Each store remembers what counting would write to it (core/steps/workspace.py).
        if not repeat:
            segments.write([(key, now, encode_first_seen(FirstSeen(now, position)))])
        if not repeat:
            forever[key] = FirstSeen(now, position)
