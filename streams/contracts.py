"""Stage three: sum each contract's usage over its workspaces, on the partition that owns the
contract. Workspaces report absolute usage with its position, so replays change nothing."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from ..core.contract_usage import ContractUsage, WorkspaceReport, change_membership, record_report
from ..core.periods import BillingPeriod
from ..models.outputs import command_result
from ..sinks.kafka import TopicPublisher
from .batches import by_source_partition, finish
from .codec import decode_contract_usage, encode_contract_usage
from .commands import CONTRACT_LEFT, CONTRACT_TERMS
from .inbox import command_message

if TYPE_CHECKING:
    from .app import Meterwatch


def register(mw: Meterwatch) -> None:
    @mw.app.agent(mw.channels.contract_inbox, name=f"{mw.settings.group_id}.sum_contract_usage")
    async def sum_contract_usage(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(500, within=0.02):
            await sum_batch(mw, events)


SUBSCRIPTION = "subscription"
REPORT = "report"


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
    publisher = TopicPublisher()
    table = mw.tables.contract_usage
    for _, part in by_source_partition(events):
        by_contract: dict[str, list[EventT]] = defaultdict(list)
        for event in part:
            if event.message.key is not None:
                by_contract[event.message.key.decode()].append(event)
        for contract_id, contract_events in by_contract.items():
            state = decode_contract_usage(table.get(contract_id))
            for event in contract_events:
                document = orjson.loads(event.message.value)
                if document["kind"] == SUBSCRIPTION:
                    state = await _subscribe(mw, state, document["command"], event, publisher)
                    continue
                now = datetime.fromtimestamp(event.message.timestamp, tz=UTC)
                state, _change = record_report(state, read_report(document), now)
            table[contract_id] = encode_contract_usage(state)
    await finish(mw, publisher)


async def _subscribe(
    mw: Meterwatch, state: ContractUsage, command: dict[str, Any], event: EventT, publisher: TopicPublisher
) -> ContractUsage:
    state, membership = change_membership(state, tuple(command["workspace_ids"]))
    received_ms = int(event.message.timestamp * 1000)
    terms = {**command, "type": CONTRACT_TERMS}
    for workspace_id in membership.joined:
        await publisher.publish(mw.channels.workspace_inbox, workspace_id, command_message(received_ms, terms))
    left = {"type": CONTRACT_LEFT, "contract_id": command["contract_id"], "command_id": command["command_id"]}
    for workspace_id in membership.left:
        await publisher.publish(mw.channels.workspace_inbox, workspace_id, command_message(received_ms, left))
    await publisher.publish(
        mw.channels.command_results, command["contract_id"], command_result(command["command_id"], "applied")
    )
    return state
