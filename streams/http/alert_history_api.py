"""HTTP: a workspace's alert history with the delivery state of each record
(``GET /usage/{workspace_id}/alerts``), answered by the worker that owns the workspace.

The history lives in the workspace's partition. The mail and webhook ledgers are not
co-partitioned with it: each entry lives in the partition of the request it settles, and requests
are keyed by the record's id, so a workspace's entries are spread over every partition and may be
other workers'. Each is read where it lives: here, or from its owner's ``/internal/ledgers``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
from faust.web import Request, Response, View
from yarl import URL

from ...core.alert_history import (
    ALERT,
    asked_day,
    decode_history,
    delivery_document,
    in_period,
    mail_keys,
    webhook_keys,
)
from .access import grant_of
from .usage_api import service_headers, unknown_workspace, workspace_state

if TYPE_CHECKING:
    from ..app import Meterwatch

MAILS = "mails-sent"
WEBHOOKS = "webhooks-sent"


def register(mw: Meterwatch) -> None:
    app = mw.app

    @app.page("/usage/{workspace_id}/alerts")
    class AlertHistory(View):
        @app.table_route(table=mw.tables.workspaces, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str) -> Response:
            found = workspace_state(mw, workspace_id)
            if found is None:
                return unknown_workspace(self, workspace_id)
            cycle = found.profile.cycle
            period = request.query.get("period", "current")
            day = cycle.local_date(datetime.now(UTC)) if period == "current" else asked_day(period)
            if day is None:
                return self.json({"error": "invalid_period", "period": period[:40]}, status=400)
            grant = grant_of(request)
            entries = [
                entry
                for entry in in_period(decode_history(mw.tables.alert_history.get(workspace_id)), day, cycle.local_date)
                if grant is None or grant.may_read_metric(str(entry.record.get("metric")))
            ]
            endpoints = list(mw.settings.webhook_endpoints)
            wanted = {
                MAILS: [(entry.record_id, key) for entry in entries for key in mail_keys(entry)],
                WEBHOOKS: [(entry.record_id, key) for entry in entries for key in webhook_keys(entry, endpoints)],
            }
            try:
                ledgers = await ledger_entries(mw, wanted)
            except Exception:
                return self.json({"error": "unavailable", "reason": "a delivery ledger could not be read"}, status=503)
            alerts, transitions = [], []
            for entry in entries:
                shown = {
                    **entry.record,
                    "delivery": delivery_document(entry, ledgers[MAILS], ledgers[WEBHOOKS], endpoints),
                }
                (alerts if entry.kind == ALERT else transitions).append(shown)
            return self.json({"workspace_id": workspace_id, "alerts": alerts, "transitions": transitions})

    @app.page("/internal/ledgers")
    class Ledgers(View):
        async def post(self, request: Request) -> Response:
            wanted = await request.json()
            return self.json(
                {name: local_entries(_ledger(mw, name), wanted.get(name) or ()) for name in (MAILS, WEBHOOKS)}
            )


def _ledger(mw: Meterwatch, name: str) -> faust.Table:
    return mw.tables.mails_sent if name == MAILS else mw.tables.webhooks_sent


def local_entries(table: faust.Table, keys: Iterable[str]) -> dict[str, str | None]:
    found = {}
    for key in keys:
        value = table.get(key)
        found[key] = None if value is None else bytes(value).decode("utf-8", "replace")
    return found


async def ledger_entries(
    mw: Meterwatch, wanted: dict[str, list[tuple[str, str]]]
) -> dict[str, dict[str, bytes | None]]:
    """Ledger name -> key -> its entry, for every ``(record id, key)`` of ``wanted``. An agent
    writes a ledger entry in the partition of the request it serves, which is keyed by the
    record's id: the entry is read here when this worker owns that partition, else from its
    owner, in one request per owner."""
    here = mw.app.conf.canonical_url
    remote: dict[str, dict[str, list[str]]] = {}
    found: dict[str, dict[str, bytes | None]] = {name: {} for name in wanted}
    for name, pairs in wanted.items():
        table = _ledger(mw, name)
        for record_id, key in pairs:
            owner = mw.app.router.key_store(table.name, record_id)
            if (owner.host, owner.port) == (here.host, here.port):
                value = table.get(key)
                found[name][key] = None if value is None else bytes(value)
            else:
                remote.setdefault(str(owner).rstrip("/"), {}).setdefault(name, []).append(key)
    for owner, asked in remote.items():
        url = URL(f"{owner}/internal/ledgers")
        async with mw.app.http_client.post(url, json=asked, headers=service_headers(mw)) as response:
            response.raise_for_status()
            answer: dict[str, Any] = await response.json()
        for name, entries in answer.items():
            for key, value in entries.items():
                found.setdefault(name, {})[key] = None if value is None else value.encode()
    return found
