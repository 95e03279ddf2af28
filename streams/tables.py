"""Every table, named explicitly (``{prefix}{app_id}-{name}-changelog``) and co-partitioned
with the workspace inbox."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from ..config import Settings


@dataclass(frozen=True)
class Tables:
    # workspace_id -> WorkspaceState: usage, contract terms, contacts, alert and Fin states
    workspaces: faust.Table
    # contract_id -> ContractUsage: every workspace's latest usage, summed per contract
    contract_usage: faust.Table
    # workspace_id \x1f event_id -> FirstSeen (core.dedupe); on disk, so memory stays bounded
    seen_event_ids: faust.Table


def declare_tables(app: faust.App, settings: Settings) -> Tables:
    def table(name: str, *, retention_seconds: float | None = None, **options: object) -> faust.Table:
        changelog = app.topic(
            settings.internal_topic(f"{name}-changelog"),
            key_type=str,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            compacting=True,
            # Entries that outlive their use are also deleted, so recovery reads a bounded log.
            deleting=retention_seconds is not None,
            retention=retention_seconds,
            internal=True,
        )
        return app.Table(
            name,
            key_type=str,
            value_type=bytes,
            partitions=settings.partitions,
            changelog_topic=changelog,
            **options,
        )

    window_seconds = int(settings.dedupe_window.total_seconds())
    return Tables(
        workspaces=table("workspaces"),
        contract_usage=table("contract-usage"),
        seen_event_ids=table(
            "seen-event-ids",
            retention_seconds=window_seconds * 2,
            store="rocksdb://",
            # RocksDB drops entries once they are well past the window, bounding the disk too.
            options={"ttl": window_seconds * 2},
        ),
    )
