"""Stage three: sum each contract's usage over its workspaces, on the partition that owns the
contract. Workspaces report absolute usage with its position, so replays change nothing. The
judgement is the pure step ``core/steps/contract.py``."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
from faust.types import EventT

from ...core.steps.contract import ContractStep
from ...models.outputs import RecordedOutputs
from ...sinks.outputs import Sinks, compose
from ..codec import decode_contract_usage, encode_contract_usage
from ..runtime.batches import by_source_partition, finish, handle_batch
from .dead_letters import dead_letter_failure

if TYPE_CHECKING:
    from ..app import Meterwatch


def register(mw: Meterwatch) -> None:
    @mw.app.agent(mw.channels.contract_inbox, name=f"{mw.settings.group_id}.sum_contract_usage")
    async def sum_contract_usage(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(500, within=0.02):
            await handle_batch(mw, "contracts", events, sum_batch)


async def sum_batch(mw: Meterwatch, events: list[EventT]) -> None:
    sinks = compose(mw.channels, webhooks=bool(mw.settings.webhook_urls))
    for _, part in by_source_partition(events):
        by_contract: dict[str, list[EventT]] = defaultdict(list)
        for event in part:
            if event.message.key is not None:
                by_contract[event.message.key.decode()].append(event)
        for contract_id, contract_events in by_contract.items():
            await _sum_contract(mw, contract_id, contract_events, sinks)
    await finish(mw, sinks)


async def _sum_contract(mw: Meterwatch, contract_id: str, events: list[EventT], sinks: Sinks) -> None:
    """One contract's messages of a batch: read once, judged in order by the step, written once."""
    table = mw.tables.contract_usage
    outputs = RecordedOutputs()
    settings = mw.settings
    step = ContractStep(
        contract_id,
        decode_contract_usage(table.get(contract_id)),
        bool(settings.smtp_host),
        outputs,
        settings.signed_command_max_age_ms,
    )
    for event in events:
        mark = step.mark()
        timestamp = event.message.timestamp
        try:
            step.apply(
                orjson.loads(event.message.value), int(timestamp * 1000), datetime.fromtimestamp(timestamp, tz=UTC)
            )
        except Exception as error:
            step.restore(mark)
            await dead_letter_failure(mw, sinks, "sum_contract_usage", event, error, key=contract_id)
    table[contract_id] = encode_contract_usage(step.state)
    step.tell_members(int(events[-1].message.timestamp * 1000))
    await sinks.publish(outputs)
    metrics = mw.metrics
    for level, n in step.alerts.items():
        metrics.alerts.labels("contract", level).inc(n)
    for (kind, status), n in step.results.items():
        metrics.commands.labels(kind, status).inc(n)
