"""A workspace's settings over HTTP: its alerts, Fin limit and billing contacts, read and changed.

``GET /usage/{id}/settings`` is answered by the worker that owns the workspace, from its table.
A ``PUT`` becomes the matching ``usage.control`` command (CONTRACT 3.2), published by whichever
worker took the request: its actor is the token's subject, with the billing permission the
token carries (only such a token may change settings), and with ``METERWATCH_COMMAND_KEYS`` set
it is signed with the first key. The answer is the command's result from
``usage.command-results`` (``applied``; ``scheduled`` with ``effective_from``; ``rejected`` with
its ``reason``, as 422), or 202 with the ``command_id`` when the result takes longer than
``RESULT_WAIT_SECONDS``: the command is published and will be applied all the same.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.web import Request, Response, View

from ...core.metric_kinds import SEATS
from ...models.commands import CommandRejected, parse_command
from ...models.common import MAX_AMOUNT, METRIC_NAMES
from ...models.signing import signature_header
from ...tokens import Grant
from ..runtime.kafka_client import client_options, close_quietly, start_plain_producer
from .access import grant_of
from .usage_api import contract_period_of, granted_metrics, unknown_workspace, workspace_state
from .usage_view import settings_document, threshold_cost

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

RESULT_WAIT_SECONDS = 5.0
CLOSE_SECONDS = 5.0
# The fields each PUT takes, as the matching command names them.
FIELDS = {
    "alert_settings": frozenset({"threshold", "early_warnings", "enabled", "forecast_warnings"}),
    "limit_settings": frozenset({"limit", "enabled"}),
    "billing_contacts": frozenset({"emails"}),
    "cost_alert_settings": frozenset({"amount", "currency", "enabled"}),
}


def register(mw: Meterwatch) -> None:
    app = mw.app
    desk = CommandDesk(mw)

    @app.page("/usage/{workspace_id}/settings")
    class Settings(View):
        @app.table_route(table=mw.tables.workspaces, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str) -> Response:
            found = workspace_state(mw, workspace_id)
            if found is None:
                return unknown_workspace(self, workspace_id)
            now = datetime.now(UTC)
            contract_usage = await contract_period_of(mw, found, now)
            document = settings_document(workspace_id, found, now, contract_usage)
            for part in ("alerts", "limits", "cost_alerts"):
                document[part] = granted_metrics(request, document[part])
            document["may_change"] = _may_change(grant_of(request))
            return self.json(document)

    @app.page("/usage/{workspace_id}/settings/alerts/{metric}/cost")
    class ThresholdCost(View):
        @app.table_route(table=mw.tables.workspaces, match_info="workspace_id")
        async def get(self, request: Request, workspace_id: str, metric: str) -> Response:
            grant = grant_of(request)
            if grant is not None and not grant.may_read_metric(metric):
                return self.json({"error": "forbidden", "reason": "the token does not grant this metric"}, status=403)
            raw = request.query.get("threshold", "")
            threshold = int(raw) if raw.isdigit() and len(raw) <= 16 else 0
            if metric not in METRIC_NAMES or metric == SEATS or not 0 < threshold <= MAX_AMOUNT:
                return self.json(
                    {"error": "invalid_settings", "reason": "a metric with alerts and a threshold of 1 or more"},
                    status=400,
                )
            found = workspace_state(mw, workspace_id)
            if found is None:
                return unknown_workspace(self, workspace_id)
            now = datetime.now(UTC)
            contract_usage = await contract_period_of(mw, found, now)
            cost = threshold_cost(workspace_id, found, now, contract_usage, metric, threshold)
            return self.json({"metric": metric, "threshold": threshold, "cost": cost})

    @app.page("/usage/{workspace_id}/settings/alerts/{metric}")
    class AlertSettingsView(View):
        async def put(self, request: Request, workspace_id: str, metric: str) -> Response:
            return await _change(self, desk, request, "alert_settings", workspace_id, metric)

    @app.page("/usage/{workspace_id}/settings/limits/{metric}")
    class LimitSettingsView(View):
        async def put(self, request: Request, workspace_id: str, metric: str) -> Response:
            return await _change(self, desk, request, "limit_settings", workspace_id, metric)

    @app.page("/usage/{workspace_id}/settings/cost-alerts/{metric}")
    class CostAlertSettingsView(View):
        async def put(self, request: Request, workspace_id: str, metric: str) -> Response:
            return await _change(self, desk, request, "cost_alert_settings", workspace_id, metric)

    @app.page("/usage/{workspace_id}/settings/billing-contacts")
    class BillingContactsView(View):
        async def put(self, request: Request, workspace_id: str) -> Response:
            return await _change(self, desk, request, "billing_contacts", workspace_id, None)

    @app.on_before_shutdown.connect
    async def stop_command_desk(app: Any, **kwargs: Any) -> None:
        await desk.stop()


def _may_change(grant: Grant | None) -> bool:
    return grant is None or grant.billing or grant.service


async def _change(
    view: View, desk: CommandDesk, request: Request, kind: str, workspace_id: str, metric: str | None
) -> Response:
    grant = grant_of(request)
    if not _may_change(grant):
        return view.json({"error": "forbidden", "reason": "changing settings needs billing permission"}, status=403)
    if grant is not None and metric is not None and not grant.may_read_metric(metric):
        return view.json({"error": "forbidden", "reason": "the token does not grant this metric"}, status=403)
    try:
        body = await request.json()
    except ValueError:
        return view.json({"error": "invalid_settings", "reason": "the body is not JSON"}, status=400)
    if not isinstance(body, dict):
        return view.json({"error": "invalid_settings", "reason": "the body must be a JSON object"}, status=400)
    unknown = sorted(set(body) - FIELDS[kind])
    if unknown:
        return view.json(
            {"error": "invalid_settings", "reason": f"unknown field {unknown[0]!r} (takes {sorted(FIELDS[kind])})"},
            status=400,
        )
    command = {
        "type": kind,
        "command_id": f"http-{uuid.uuid4().hex}",
        "issued_at": datetime.now(UTC).isoformat(),
        "workspace_id": workspace_id,
        # The actor is who the token names; its permission was checked above.
        "actor": {"id": grant.subject if grant is not None else "anonymous", "billing_permission": True},
        **({"metric": metric} if metric is not None else {}),
        **body,
    }
    try:
        parse_command(orjson.dumps(command))
    except CommandRejected as rejected:
        return view.json({"error": "invalid_settings", "reason": rejected.reason}, status=400)
    try:
        result = await desk.submit(workspace_id, command)
    except Exception as error:
        log.warning("settings: could not publish %s: %s: %s", kind, type(error).__name__, error)
        return view.json({"error": "unavailable", "reason": "the change could not be published; try again"}, status=503)
    if result is None:
        return view.json({"command_id": command["command_id"], "status": "pending"}, status=202)
    answer = {k: result[k] for k in ("status", "effective_from", "reason") if k in result}
    return view.json(
        {"command_id": command["command_id"], **answer}, status=422 if result.get("status") == "rejected" else 200
    )


class CommandDesk:
    """Publishes commands to ``usage.control`` and waits for their results.

    Its reader follows ``usage.command-results`` from the end (committed records only), from
    before the first command is published; it starts with the first change asked for.
    """

    def __init__(self, mw: Meterwatch) -> None:
        self._mw = mw
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._starting = asyncio.Lock()

    async def submit(self, key: str, command: dict[str, Any]) -> dict[str, Any] | None:
        """Publish ``command`` keyed by ``key``; its result, or None if it does not come in time."""
        producer = await self._started()
        command_id = command["command_id"]
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        try:
            raw = orjson.dumps(command)
            keys = self._mw.settings.command_signing_keys
            headers = []
            if keys:
                key_id, secret = next(iter(keys.items()))  # the first is the one to sign with
                headers.append(signature_header(raw, key_id, secret))
            await producer.send_and_wait(self._mw.names.usage_control, raw, key=key.encode(), headers=headers)
            try:
                return await asyncio.wait_for(asyncio.shield(future), RESULT_WAIT_SECONDS)
            except TimeoutError:
                return None
        finally:
            self._pending.pop(command_id, None)

    async def _started(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                producer = await start_plain_producer(self._mw.bootstrap, self._mw.settings)
                try:
                    await self._follow_results(producer)
                except Exception:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _follow_results(self, producer: AIOKafkaProducer) -> None:
        topic = self._mw.names.command_results
        partitions = sorted(await producer.partitions_for(topic))  # waits for the topic's metadata
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._mw.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            **client_options(self._mw.settings),
        )
        await consumer.start()
        try:
            assigned = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:  # fix the positions before any command is published
                await consumer.position(tp)
        except Exception:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(consumer), name="meterwatch-command-results")

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("settings: reading command results failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    try:
                        result = orjson.loads(record.value or b"")
                    except orjson.JSONDecodeError:
                        continue
                    future = self._pending.get(result.get("command_id")) if isinstance(result, dict) else None
                    if future is not None and not future.done():
                        future.set_result(result)

    async def stop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        if consumer is not None:
            await close_quietly("settings API's command-results reader", consumer.stop(), CLOSE_SECONDS)
        if producer is not None:
            await close_quietly("settings API's command producer", producer.stop(), CLOSE_SECONDS)
