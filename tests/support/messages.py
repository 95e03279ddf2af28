"""Commands and usage events as tests send them to ``usage.control`` and ``usage.events``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

ADMIN = {"id": "admin", "billing_permission": True}


def bare_command(kind: str, **fields: Any) -> dict:
    """A command with only what every command carries (a fresh id, issued now); ``fields`` add the rest."""
    return {
        "type": kind,
        "command_id": f"{kind}-{uuid.uuid4().hex[:8]}",
        "issued_at": datetime.now(UTC).isoformat(),
        **fields,
    }


def command(kind: str, workspace: str, **fields: Any) -> dict:
    """A workspace's command, issued by an admin with the billing permission."""
    return bare_command(kind, workspace_id=workspace, actor=ADMIN, **fields)


def event(
    workspace: str,
    metric: str = "sms",
    quantity: int = 1,
    conversation: str | None = None,
    *,
    event_id: str | None = None,
    at: datetime | None = None,
) -> dict:
    """One usage event: a fresh id unless ``event_id`` is given, occurring now unless ``at`` is."""
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "workspace_id": workspace,
        "metric": metric,
        "quantity": quantity,
        "occurred_at": (at or datetime.now(UTC)).isoformat(),
        "conversation_id": conversation,
    }
