"""HTTP: health, the usage and limits API (answered by the worker that owns the workspace's
partition)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from faust.web import Request, Response, View
from yarl import URL

from ...core.contract_usage import ContractPeriod, ContractUsage
from ...core.workspace import WorkspaceState
from ...models.common import METRIC_NAMES
from ..codec import decode_contract_usage, decode_workspace
from .access import grant_of
from .usage_view import daily_document, limits_document, usage_document

if TYPE_CHECKING:
    from ..app import Meterwatch


def register(mw: Meterwatch) -> None:
    app = mw.app
    tables = mw.tables
    usage_table = tables.workspaces

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            state = readiness(mw)
            body = {"status": state, "processing_guarantee": mw.guarantee.value}
            failure = mw.commit_gate.failure
            if state == "failing" and failure is not None:
                body["reason"] = f"{failure[0]} batch failed: {failure[1]}"
            return self.json(body, status=200 if state == "consuming" else 503)

    @app.page("/usage/{workspace_id}")
    class Usage(View):
        @app.table_route(table=usage_table, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str) -> Response:
            found = workspace_state(mw, workspace_id)
            if found is None:
                return unknown_workspace(self, workspace_id)
            now = datetime.now(UTC)
            contract_usage = await contract_period_of(mw, found, now)
            document = usage_document(workspace_id, found, now, contract_usage)
            document["metrics"] = granted_metrics(request, document["metrics"])
            return self.json(document)

    @app.page("/limits/{workspace_id}")
    class Limits(View):
        @app.table_route(table=usage_table, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str) -> Response:
            # The workspace's own state only: no contract, cost or forecast to work out.
            found = workspace_state(mw, workspace_id)
            limits = None if found is None else limits_document(workspace_id, found, datetime.now(UTC))
            if limits is None:
                return unknown_workspace(self, workspace_id)
            return self.json({**limits, "limits": granted_metrics(request, limits["limits"])})

    @app.page("/usage/{workspace_id}/daily")
    class Daily(View):
        @app.table_route(table=usage_table, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str) -> Response:
            metric = request.query.get("metric", "")
            if metric not in METRIC_NAMES:
                return self.json({"error": "unknown_metric", "metric": metric}, status=400)
            found = workspace_state(mw, workspace_id)
            if found is None:
                return unknown_workspace(self, workspace_id)
            return self.json(daily_document(workspace_id, metric, found, datetime.now(UTC)))

    @app.page("/internal/contract-usage/{contract_id}")
    class ContractUsageView(View):
        async def get(self, request: Request, contract_id: str) -> Response:
            raw = tables.contract_usage.get(contract_id)
            return self.bytes(raw or b"{}", content_type="application/json")


async def contract_usage_of(mw: Meterwatch, contract_id: str) -> ContractUsage:
    """The contract's usage, from this worker if it owns the contract's partition, else its owner."""
    table = mw.tables.contract_usage
    owner = mw.app.router.key_store(table.name, contract_id)
    here = mw.app.conf.canonical_url
    if (owner.host, owner.port) == (here.host, here.port):
        return decode_contract_usage(table.get(contract_id))
    # The id is one path segment whatever it holds (``/``, ``?``, ``#``, ``..``): escaped whole.
    url = URL(f"{str(owner).rstrip('/')}/internal/contract-usage/{quote(contract_id, safe='')}", encoded=True)
    async with mw.app.http_client.get(url, headers=service_headers(mw)) as response:
        response.raise_for_status()
        return decode_contract_usage(await response.read())


async def contract_period_of(mw: Meterwatch, state: WorkspaceState, now: datetime) -> ContractPeriod | None:
    """The usage of the workspace's contract in the period containing ``now``; None without a contract."""
    contract = state.profile.contract
    if contract is None:
        return None
    summed = await contract_usage_of(mw, contract.contract_id)
    return summed.for_period(state.profile.cycle.period_containing(now))


# Workers sign what they ask each other for with a short-lived service token of their own.
SERVICE_TOKEN_TTL = timedelta(minutes=5)


def service_headers(mw: Meterwatch) -> dict[str, str]:
    if mw.keys is None:
        return {}
    token = mw.keys.mint(datetime.now(UTC), SERVICE_TOKEN_TTL, service=True, subject="meterwatch-worker")
    return {"Authorization": f"Bearer {token}"}


def unknown_workspace(view: View, workspace_id: str) -> Response:
    return view.json({"error": "unknown_workspace", "workspace_id": workspace_id}, status=404)


def granted_metrics(request: Request, by_metric: dict[str, Any]) -> dict[str, Any]:
    """``by_metric`` without the metrics the request's token does not grant."""
    grant = grant_of(request)
    if grant is None:
        return by_metric
    return {metric: entry for metric, entry in by_metric.items() if grant.may_read_metric(metric)}


def workspace_state(mw: Meterwatch, workspace_id: str) -> WorkspaceState | None:
    return decode_workspace(mw.tables.workspaces.get(workspace_id))


def readiness(mw: Meterwatch) -> str:
    """``consuming`` once partitions are assigned and tables recovered; else what it waits for,
    or ``failing`` while batches fail (streams/runtime/batches.py)."""
    app = mw.app
    if not app.started or app.consumer is None:
        return "starting"
    if broker_reachable(app) is False:
        return "broker_unreachable"
    if mw.commit_gate.failure is not None:
        return "failing"  # until a batch of the failed stage succeeds
    # Faust clears ``rebalancing`` only once tables are recovered, so recovery is asked first.
    recovery = app.tables.recovery
    if recovery.in_recovery:
        return "recovering"
    if app.rebalancing:
        return "rebalancing"
    if not recovery.completed.is_set():
        return "recovering"
    from ..pipeline.ingest import is_reading  # ingest logs through lifecycle, which imports this module

    if not is_reading(mw):
        return "starting"  # stage one has not joined its group yet: usage.events is not read
    return "consuming"


def broker_reachable(app: Any) -> bool | None:
    """Whether the consumer holds an open connection to any broker; None if it cannot be told.

    Faust keeps consuming (and reconnecting) through a broker outage without a state of its
    own for it, so the consumer's connections are the one honest sign.
    """
    try:
        client = app.consumer._thread._ensure_consumer()._client  # noqa: SLF001 - no public view
        connections = list(client._conns.values())  # noqa: SLF001
    except Exception:
        return None
    return any(connection.connected() for connection in connections)
