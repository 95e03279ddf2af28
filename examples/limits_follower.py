"""A consumer of ``usage.limits`` (CONTRACT 5.2): a local copy of the compacted topic that answers
``is_enabled(workspace_id, metric)``.

The rule it follows: the latest record per key is the state of that workspace's limited metric,
and a (workspace, metric) with no record is enabled. Fin's records are keyed by the workspace id,
every other metric's by ``<workspace_id>`` U+001F ``<metric>``; a record with no value (a
tombstone) forgets its key, which is enabled again.

It reads every partition from the beginning (committed records only, with no consumer group,
so that every copy holds the whole topic), then follows new records::

    python examples/limits_follower.py localhost:9092 usage.limits ws_42:sms ws_42:fin_resolutions

prints each queried (workspace, metric) once the copy has caught up, and then every change.
It needs only ``aiokafka``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

FIN_RESOLUTIONS = "fin_resolutions"
KEY_SEPARATOR = "\x1f"


def limit_key(workspace_id: str, metric: str) -> str:
    """The key of ``usage.limits`` records about ``metric`` of ``workspace_id``."""
    return workspace_id if metric == FIN_RESOLUTIONS else f"{workspace_id}{KEY_SEPARATOR}{metric}"


class LimitsFollower:
    """The latest state per key of ``usage.limits``, and whether a workspace's metric is enabled."""

    def __init__(self, on_change: Callable[[str, str, bool], None] | None = None) -> None:
        self._disabled: dict[str, bool] = {}  # key -> whether its latest record says disabled
        self._on_change = on_change
        self.caught_up = asyncio.Event()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Take one record of the topic, in partition order."""
        if key is None:
            return  # meterwatch keys every record; an unkeyed one names no limit
        text = key.decode()
        if value is None:
            self._disabled.pop(text, None)
            return
        record = json.loads(value)
        self._disabled[text] = record["state"] == "disabled"
        if self._on_change is not None:
            self._on_change(record["workspace_id"], record["metric"], record["state"] != "disabled")

    def is_enabled(self, workspace_id: str, metric: str) -> bool:
        return not self._disabled.get(limit_key(workspace_id, metric), False)

    async def follow(self, bootstrap: str, topic: str, stop: asyncio.Event | None = None) -> None:
        """Read ``topic`` from the beginning, set ``caught_up`` once every partition has been read
        to where it ended at the start, and go on following until ``stop`` is set."""
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            # Without a group every partition of the topic is assigned, once its metadata has arrived.
            while not consumer.assignment():
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(0.05)
            partitions = sorted(consumer.assignment())
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while stop is None or not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for record in records:
                        self.apply(record.key, record.value)
                if not self.caught_up.is_set() and all([await consumer.position(p) >= ends[p] for p in partitions]):
                    self.caught_up.set()
        finally:
            await consumer.stop()


async def _main(bootstrap: str, topic: str, queries: list[str]) -> None:
    def changed(workspace_id: str, metric: str, enabled: bool) -> None:
        if follower.caught_up.is_set():
            print(f"{workspace_id} {metric}: {'enabled' if enabled else 'disabled'}", flush=True)

    follower = LimitsFollower(changed)
    following = asyncio.create_task(follower.follow(bootstrap, topic))
    await follower.caught_up.wait()
    for query in queries:
        workspace_id, _, metric = query.rpartition(":")
        state = "enabled" if follower.is_enabled(workspace_id, metric) else "disabled"
        print(f"{workspace_id} {metric}: {state}", flush=True)
    await following


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: limits_follower.py BOOTSTRAP TOPIC [WORKSPACE:METRIC ...]")
    asyncio.run(_main(sys.argv[1], sys.argv[2], sys.argv[3:]))
