"""Stage three: sum each contract's usage over its workspaces, on the partition that owns the
contract. Workspaces report absolute usage with its position, so replays change nothing."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from ...core.alerts import CONTRACT_SCOPE, ContractAlertState, LevelReached, judge_contract_usage
from ...core.contract_usage import (
    ContractTotalChange,
    ContractUsage,
    WorkspaceReport,
    change_membership,
    record_report,
)
from ...core.contracts import ContractTerms
from ...core.costs import estimated_cost, money
from ...core.periods import BillingPeriod
from ...core.workspace import ContractOthers, WorkspaceState
from ...models.outputs import ALERT, RecordedOutputs, alert_record, command_result
from ...sinks.outputs import Sinks, compose
from ..codec import decode_contract_usage, encode_contract_usage
from ..runtime.batches import by_source_partition, finish, handle_batch
from .commands import CONTRACT_LEFT, CONTRACT_TERMS, contract_terms
from .dead_letters import dead_letter_failure
from .inbox import command_message

if TYPE_CHECKING:
    from ..app import Meterwatch


def register(mw: Meterwatch) -> None:
    @mw.app.agent(mw.channels.contract_inbox, name=f"{mw.settings.group_id}.sum_contract_usage")
    async def sum_contract_usage(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(500, within=0.02):
            await handle_batch(mw, "contracts", events, sum_batch)


SUBSCRIPTION = "subscription"
REPORT = "report"
CONTACTS = "contacts"
# Sent to each member when the contract's sums change: what the others have used.
CONTRACT_OTHERS = "contract_others"


def contacts_message(workspace_id: str, emails: tuple[str, ...]) -> bytes:
    return orjson.dumps({"kind": CONTACTS, "workspace_id": workspace_id, "emails": list(emails)})


def subscription_message(command: dict[str, Any]) -> bytes:
    return orjson.dumps({"kind": SUBSCRIPTION, "command": command})


def report_message(report: WorkspaceReport) -> bytes:
    return orjson.dumps(
        {
            "kind": REPORT,
            "workspace_id": report.workspace_id,
            "metric": report.metric,
            "period_start": report.period.start.isoformat(),
            "period_end": report.period.end.isoformat(),
            "usage": report.usage,
            "position": report.position,
        }
    )


def read_report(document: dict[str, Any]) -> WorkspaceReport:
    return WorkspaceReport(
        workspace_id=document["workspace_id"],
        metric=document["metric"],
        period=BillingPeriod(
            datetime.fromisoformat(document["period_start"]), datetime.fromisoformat(document["period_end"])
        ),
        usage=document["usage"],
        position=document["position"],
    )


async def sum_batch(mw: Meterwatch, events: list[EventT]) -> None:
    sinks = compose(mw.channels)
    for _, part in by_source_partition(events):
        by_contract: dict[str, list[EventT]] = defaultdict(list)
        for event in part:
            if event.message.key is not None:
                by_contract[event.message.key.decode()].append(event)
        for contract_id, contract_events in by_contract.items():
            await ContractBatch(mw, contract_id, sinks).apply(contract_events)
    await finish(mw, sinks)


class ContractBatch:
    """One contract's messages from one batch: read once, judged in order, written once; its
    outputs recorded as it goes and published at the end."""

    def __init__(self, mw: Meterwatch, contract_id: str, sinks: Sinks) -> None:
        self.mw = mw
        self.contract_id = contract_id
        self.sinks = sinks
        self.state = decode_contract_usage(mw.tables.contract_usage.get(contract_id))
        self.sums_changed = False
        self.outputs = RecordedOutputs()

    async def apply(self, events: list[EventT]) -> None:
        for event in events:
            before = (self.state, self.sums_changed, len(self.outputs))
            try:
                self._apply_one(event)
            except Exception as error:
                self.state, self.sums_changed, outputs = before
                self.outputs.truncate(outputs)
                await dead_letter_failure(self.mw, self.sinks, "sum_contract_usage", event, error, key=self.contract_id)
        self.mw.tables.contract_usage[self.contract_id] = encode_contract_usage(self.state)
        if self.sums_changed:
            self._tell_members(int(events[-1].message.timestamp * 1000))
        await self.sinks.publish(self.outputs)

    def _apply_one(self, event: EventT) -> None:
        document = orjson.loads(event.message.value)
        kind = document["kind"]
        if kind == SUBSCRIPTION:
            self.state = _subscribe(self.mw, self.state, document["command"], event, self.outputs)
            self.sums_changed = True
        elif kind == CONTACTS:
            contacts = {**self.state.contacts, document["workspace_id"]: tuple(document["emails"])}
            self.state = replace(self.state, contacts=MappingProxyType(contacts))
        else:
            now = datetime.fromtimestamp(event.message.timestamp, tz=UTC)
            self.state, change = record_report(self.state, read_report(document), now)
            if change.after != change.before:
                self.sums_changed = True
                self._judge(change, now)

    def _judge(self, change: ContractTotalChange, now: datetime) -> None:
        terms = self.state.terms
        included = terms.included(change.metric) if terms else None
        current = self.state.alerts.get(change.metric, ContractAlertState())
        judged, reached = judge_contract_usage(current, change.before, change.after, included, change.period)
        self.state = replace(self.state, alerts=MappingProxyType({**self.state.alerts, change.metric: judged}))
        if reached is None or terms is None:
            return
        record = contract_alert_record(
            self.contract_id, terms, change.metric, reached, list(self.state.recipients()), now
        )
        self.mw.metrics.alerts.labels("contract", str(reached.level)).inc()
        self.outputs.alert(self.contract_id, record)
        if self.mw.settings.smtp_host and record["recipients"]:
            self.outputs.mail_request(ALERT, record, record["recipients"])

    def _tell_members(self, at_ms: int) -> None:
        latest = self.state.latest()
        if latest is None:
            return
        metrics = set(latest.reports)
        for workspace_id in self.state.workspace_ids:
            others = {m: latest.total(m) - latest.usage_of(m, workspace_id) for m in metrics}
            message = {
                "type": CONTRACT_OTHERS,
                "contract_id": self.contract_id,
                "period": [latest.period.start.isoformat(), latest.period.end.isoformat()],
                "usage": others,
            }
            self.outputs.workspace_message(workspace_id, command_message(at_ms, message))


def contract_alert_record(
    contract_id: str, terms: ContractTerms, metric: str, reached: LevelReached, recipients: list[str], at: datetime
) -> dict[str, Any]:
    price = terms.prices.get(metric)
    cost = None
    if price is not None:
        amount = estimated_cost(reached.usage, price.unit_price, terms.included(metric))
        cost = {"amount": money(amount), "currency": terms.currency}
    return alert_record(
        CONTRACT_SCOPE,
        contract_id,
        metric,
        reached,
        workspace_id=None,
        contract_id=contract_id,
        estimated_cost=cost,
        recipients=recipients,
        triggered_at=at,
        cause_event_id=None,
    )


def _subscribe(
    mw: Meterwatch, state: ContractUsage, command: dict[str, Any], event: EventT, outputs: RecordedOutputs
) -> ContractUsage:
    state, membership = change_membership(state, tuple(command["workspace_ids"]))
    state = replace(state, terms=contract_terms(command))
    received_ms = int(event.message.timestamp * 1000)
    terms = {**command, "type": CONTRACT_TERMS}
    for workspace_id in membership.joined:
        outputs.workspace_message(workspace_id, command_message(received_ms, terms))
    left = {"type": CONTRACT_LEFT, "contract_id": command["contract_id"], "command_id": command["command_id"]}
    for workspace_id in membership.left:
        outputs.workspace_message(workspace_id, command_message(received_ms, left))
    mw.metrics.commands.labels("subscription", "applied").inc()
    outputs.command_result(command["contract_id"], command_result(command["command_id"], "applied"))
    return state


def take_contract_others(state: WorkspaceState, command: dict[str, Any]) -> WorkspaceState:
    """A member's copy of the others' usage (only from its current contract)."""
    contract = state.profile.contract
    if contract is None or contract.contract_id != command["contract_id"]:
        return state
    start, end = command["period"]
    period = BillingPeriod(datetime.fromisoformat(start), datetime.fromisoformat(end))
    return replace(state, contract_others=ContractOthers(period, MappingProxyType(dict(command["usage"]))))
