"""Realistic demo usage for ``meterwatch dev``: a shared contract, settings, a steady trickle."""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

CONTRACT_ID = "c_acme"
CONTRACT_WORKSPACES = ("ws_acme_eu", "ws_acme_us")
PAYG_WORKSPACE = "ws_globex"
WORKSPACES = (*CONTRACT_WORKSPACES, PAYG_WORKSPACE)
ADMIN = {"id": "admin_1", "billing_permission": True}

# Relative weights: messages and email dominate, Fin and phone are rarer.
_METRIC_WEIGHTS = {"messages_sent": 40, "email": 25, "sms": 12, "whatsapp": 8, "phone": 4, "fin_resolutions": 10}


def setup_commands(now: datetime) -> list[tuple[str, dict[str, Any]]]:
    """(key, command) pairs for ``usage.control``: contract, contacts, alerts, a Fin limit."""
    issued = now.isoformat()
    commands: list[tuple[str, dict[str, Any]]] = [
        (
            CONTRACT_ID,
            {
                "type": "subscription",
                "command_id": "demo-subscription",
                "issued_at": issued,
                "contract_id": CONTRACT_ID,
                "workspace_ids": list(CONTRACT_WORKSPACES),
                "billing_anchor": date(2026, 1, 15).isoformat(),
                "timezone": "Europe/Dublin",
                "currency": "USD",
                "prices": {
                    "messages_sent": {"unit_price": "0.01", "included": 5000},
                    "email": {"unit_price": "0.002", "included": None},
                    "sms": {"unit_price": "0.05", "included": 1000},
                    "whatsapp": {"unit_price": "0.03", "included": None},
                    "phone": {"unit_price": "0.10", "included": None},
                    "fin_resolutions": {"unit_price": "0.99", "included": 300},
                    "seats": {"unit_price": "39.00", "included": 10},
                },
            },
        )
    ]
    for workspace in WORKSPACES:
        commands.append(
            (
                workspace,
                {
                    "type": "billing_contacts",
                    "command_id": f"demo-contacts-{workspace}",
                    "issued_at": issued,
                    "workspace_id": workspace,
                    "actor": ADMIN,
                    "emails": [f"billing@{workspace.removeprefix('ws_').replace('_', '-')}.example.com"],
                },
            )
        )
        commands.append(
            (
                workspace,
                {
                    "type": "alert_settings",
                    "command_id": f"demo-alert-sms-{workspace}",
                    "issued_at": issued,
                    "workspace_id": workspace,
                    "actor": ADMIN,
                    "metric": "sms",
                    "threshold": 400,
                    "early_warnings": True,
                    "enabled": True,
                },
            )
        )
    commands.append(
        (
            "ws_acme_eu",
            {
                "type": "limit_settings",
                "command_id": "demo-fin-limit",
                "issued_at": issued,
                "workspace_id": "ws_acme_eu",
                "actor": ADMIN,
                "metric": "fin_resolutions",
                "limit": 60,
                "enabled": True,
            },
        )
    )
    return commands


def usage_events(rng: random.Random) -> Iterator[dict[str, Any]]:
    """An endless, plausible stream: mostly messages, some Fin resolutions and retractions."""
    metrics = list(_METRIC_WEIGHTS)
    weights = list(_METRIC_WEIGHTS.values())
    conversations = itertools.count(1)
    resolved: list[str] = []
    for tick in itertools.count():
        workspace = rng.choice(WORKSPACES)
        now = datetime.now(UTC).isoformat()
        if tick % 200 == 0:
            yield _event(workspace, "seats", 8 + rng.randrange(6), now)
            continue
        metric = rng.choices(metrics, weights)[0]
        if metric == "fin_resolutions":
            if resolved and rng.random() < 0.1:
                yield _event(workspace, metric, -1, now, resolved.pop(rng.randrange(len(resolved))))
                continue
            conversation = f"conv_{next(conversations)}"
            resolved.append(conversation)
            yield _event(workspace, metric, 1, now, conversation)
            continue
        yield _event(workspace, metric, rng.choice((1, 1, 1, 2, 5)), now)


def _event(
    workspace: str, metric: str, quantity: int, occurred_at: str, conversation: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": uuid.uuid4().hex,
        "workspace_id": workspace,
        "metric": metric,
        "quantity": quantity,
        "occurred_at": occurred_at,
        "conversation_id": conversation,
    }
