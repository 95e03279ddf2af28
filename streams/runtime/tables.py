"""Every table, named explicitly (``{prefix}{app_id}-{name}-changelog``) and co-partitioned
with the workspace inbox."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from ...config import Settings
from ...core.dedupe import KEPT_WINDOWS
from .durable_table import DurableTable
from .seen_ids_table import SeenEventIdsTable

# The seen-event-ids store (streams/runtime/seen_ids_store.py). Each partition's database writes to
# memtables of 4 MiB, at most 2; every partition of a worker shares one block cache, which holds
# the index and filter blocks too and is charged for all the memtables, at most 32 MiB of them
# (so 8 partitions each fill a memtable before it is flushed). RocksDB memory is then about the
# cache's 48 MiB, whatever the partitions and ids held.
ROCKSDB_MEMTABLE_BYTES = 4 * 1024 * 1024
ROCKSDB_MEMTABLE_BUDGET_BYTES = 32 * 1024 * 1024
ROCKSDB_BLOCK_CACHE_BYTES = 48 * 1024 * 1024
CHANGELOG_SLACK_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Tables:
    # workspace_id -> WorkspaceState: usage, contract terms, contacts, alert and Fin states
    workspaces: DurableTable
    # contract_id -> ContractUsage: every workspace's latest usage, summed per contract
    contract_usage: faust.Table
    # workspace_id \x1f event_id -> FirstSeen (core.dedupe); on disk, so memory stays bounded
    seen_event_ids: SeenEventIdsTable
    # alert_id / transition_id -> "sent" or "failed: reason": what the mail agent has done
    mails_sent: faust.Table
    # id and endpoint hash (core.webhooks.delivery_key) -> "sent" or "failed: reason"
    webhooks_sent: faust.Table
    # workspace_id -> its alerts and limit transitions of the last periods (core.alert_history),
    # written beside the workspace's state in the same partition
    alert_history: DurableTable
    # inbox partition -> the last inbox offset counting applied on it
    # (streams/runtime/applied_marks.py), written beside the workspace values of each batch
    applied_through: DurableTable

    def all(self) -> tuple[DurableTable, ...]:
        return (
            self.workspaces,
            self.contract_usage,
            self.seen_event_ids,
            self.mails_sent,
            self.webhooks_sent,
            self.alert_history,
            self.applied_through,
        )  # type: ignore[return-value]


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    def table(name: str, kind: type[DurableTable] = DurableTable, **options: object) -> faust.Table:
        # Faust names the changelog "{app id}-{name}-changelog"; the app id is "{prefix}{app_id}".
        table = kind(
            app,
            name=name,
            key_type=str,
            value_type=bytes,
            partitions=settings.partitions,
            beacon=app.tables.beacon,
            **options,
        )
        return app.tables.add(table)

    window_seconds = int(settings.dedupe_window.total_seconds())
    # The store expires ids by Kafka time (streams/runtime/seen_ids_store.py); the broker deletes the
    # changelog's copy by its own clock. The extra days keep a copy for a worker that falls
    # that far behind and then rebuilds the store without its data dir.
    changelog_retention_ms = (window_seconds * KEPT_WINDOWS + CHANGELOG_SLACK_SECONDS) * 1000
    return Tables(
        workspaces=table("workspaces"),
        contract_usage=table("contract-usage"),
        mails_sent=table("mails-sent"),
        webhooks_sent=table("webhooks-sent"),
        alert_history=table("alert-history"),
        applied_through=table("applied-through"),
        seen_event_ids=table(
            "seen-event-ids",
            SeenEventIdsTable,
            # Entries long past the window are also deleted from the changelog, so recovery
            # reads a bounded log.
            extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": str(changelog_retention_ms)},
            # "rocksdb://" parses to a falsy URL, and Faust then silently uses memory; the path
            # names the files under the app's table directory.
            store="rocksdb:seen-event-ids",
            options={
                # Ids are kept in segments of one window of Kafka time, each dropped once its
                # partition's Kafka time is two windows past it; this bounds the disk too.
                "window_ms": window_seconds * 1000,
                # Faust's defaults (3 memtables of 64 MiB and a 2 GiB block cache per partition)
                # let memory grow with the id count, hundreds of MiB per worker; ids are written
                # once and rarely read back, so small memtables and one small cache cost little.
                "write_buffer_size": ROCKSDB_MEMTABLE_BYTES,
                "max_write_buffer_number": 2,
                "memtable_budget": ROCKSDB_MEMTABLE_BUDGET_BYTES,
                "block_cache_size": ROCKSDB_BLOCK_CACHE_BYTES,
            },
        ),
    )
