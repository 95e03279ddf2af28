"""The workspace inbox: the internal topic that carries, per workspace and in order, accepted
usage events and commands to the partition that owns the workspace.

Messages are compact JSON: ``{"kind": "usage", "events": [...]}`` or ``{"kind": "command", ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..models.usage_event import UsageEvent

USAGE = "usage"
COMMAND = "command"
# Positions number events inside an inbox message; a message holds fewer than this.
EVENTS_PER_MESSAGE = 1000
POSITION_STRIDE = 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an event was first published, for dead-letter records."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


def usage_message(items: list[tuple[UsageEvent, Origin, int]]) -> bytes:
    """``items``: (event, where it was published, when the broker received it in ms)."""
    return orjson.dumps(
        {
            "kind": USAGE,
            "events": [
                [
                    e.event_id,
                    e.metric.value,
                    e.quantity,
                    e.occurred_at.isoformat(),
                    e.conversation_id,
                    o.topic,
                    o.partition,
                    o.offset,
                    o.key.decode("utf-8", "replace") if o.key is not None else None,
                    received_ms,
                ]
                for e, o, received_ms in items
            ],
        }
    )


@dataclass(frozen=True, slots=True)
class InboxEvent:
    event_id: str
    metric: str
    quantity: int
    occurred_at: datetime
    conversation_id: str | None
    origin: Origin
    received: datetime

    def as_json(self, workspace_id: str) -> bytes:
        return orjson.dumps(
            {
                "event_id": self.event_id,
                "workspace_id": workspace_id,
                "metric": self.metric,
                "quantity": self.quantity,
                "occurred_at": self.occurred_at.isoformat(),
                "conversation_id": self.conversation_id,
            }
        )


def read_usage(document: dict[str, Any]) -> list[InboxEvent]:
    return [
        InboxEvent(
            event_id=row[0],
            metric=row[1],
            quantity=row[2],
            occurred_at=datetime.fromisoformat(row[3]),
            conversation_id=row[4],
            origin=Origin(row[5], row[6], row[7], row[8].encode() if row[8] is not None else None),
            received=datetime.fromtimestamp(row[9] / 1000, tz=UTC),
        )
        for row in document["events"]
    ]


def command_message(received_ms: int, command: dict[str, Any]) -> bytes:
    return orjson.dumps({"kind": COMMAND, "received_ms": received_ms, "command": command})
