"""Stage two: count each workspace's usage from its inbox, exactly once.

A batch is handled partition by partition and workspace by workspace: the workspace's values are
read once, every message is judged in order, and each value is written back once. A message at or
below the workspace's ``applied_through`` was already applied (a replay after a crash) and is
skipped; an ``event_id`` already counted by another delivery within the window is a repeat.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from faust.types import EventT

from ..core.contract_usage import WorkspaceReport
from ..core.dedupe import FirstSeen, decode_first_seen, encode_first_seen, is_repeat
from ..core.fin_limit import Transition
from ..core.metering import FIN_RESOLUTIONS, Reading, UsageChange, count_reading
from ..core.periods import BillingPeriod, event_time_rejection
from ..core.workspace import WorkspaceState
from ..models.commands import MAX_AMOUNT
from ..models.outputs import dead_letter
from ..models.usage_event import RejectCode
from ..sinks.kafka import Publisher, TopicPublisher
from . import commands, fin
from .alerting import alert_record, apply_alert_settings, judge_change
from .batches import by_source_partition, finish, handle_batch
from .codec import decode_workspace, encode_workspace
from .contracts import CONTRACT_OTHERS, contacts_message, report_message, take_contract_others
from .inbox import COMMAND, POSITION_STRIDE, USAGE, InboxEvent, read_usage
from .mailing import ALERT, FIN_DISABLED, mail_id, mail_request
from .poison import dead_letter_failure

if TYPE_CHECKING:
    from .app import Meterwatch

log = logging.getLogger(__name__)

BATCH_MESSAGES = 500
BATCH_WITHIN_SECONDS = 0.02
KEY_SEPARATOR = "\x1f"


def register(mw: Meterwatch) -> None:
    @mw.app.agent(mw.channels.workspace_inbox, name=f"{mw.settings.group_id}.count_usage")
    async def count_usage(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(BATCH_MESSAGES, within=BATCH_WITHIN_SECONDS):
            await handle_batch(mw, events, count_batch)


async def count_batch(mw: Meterwatch, events: list[EventT]) -> None:
    with mw.metrics.batch_seconds.labels("count").time():
        mw.metrics.batch_size.labels("count").observe(len(events))
        await _count_batch(mw, events)


async def _count_batch(mw: Meterwatch, events: list[EventT]) -> None:
    publisher = TopicPublisher()
    for _, part in by_source_partition(events):
        by_workspace: dict[str, list[EventT]] = defaultdict(list)
        for event in part:
            if event.message.key is None:
                continue  # only meterwatch writes the inbox, always keyed
            by_workspace[event.message.key.decode()].append(event)
        batches = [WorkspaceBatch(mw, workspace_id, publisher) for workspace_id in by_workspace]
        for batch in batches:
            await batch.apply(by_workspace[batch.workspace_id])
        # Event ids are remembered before the counts they guard are written: were the counts
        # kept and the ids lost (a crash between the two writes, without transactions), a
        # later copy of an event would be counted again.
        mw.tables.seen_event_ids.remember({k: v for batch in batches for k, v in batch.event_ids_to_remember()})
        await mw.tables.seen_event_ids.wait_for_writes()
        for batch in batches:
            batch.write_state()
    await finish(mw, publisher)


class WorkspaceBatch:
    """One workspace's messages from one batch: read once, judge in order, write once."""

    def __init__(self, mw: Meterwatch, workspace_id: str, publisher: Publisher) -> None:
        self.mw = mw
        self.workspace_id = workspace_id
        self.publisher = publisher
        self.state = decode_workspace(mw.tables.workspaces.get(workspace_id)) or WorkspaceState()
        self.applied_any = False
        self.first_seen: dict[str, FirstSeen] = {}
        # (metric, period) whose usage this batch changed, for the contract's sum.
        self.changed: dict[tuple[str, BillingPeriod], int] = {}
        self.contacts_changed = False
        self.window_ms = int(mw.settings.dedupe_window.total_seconds() * 1000)

    async def apply(self, events: list[EventT]) -> None:
        for event in events:
            offset = event.message.offset
            if offset <= self.state.usage.applied_through:
                self.mw.metrics.messages_replayed.inc()
                continue
            document = orjson.loads(event.message.value)
            if document["kind"] == USAGE:
                for index, item in enumerate(read_usage(document)):
                    await self._isolated(event, self._count(item, offset * POSITION_STRIDE + index), item)
            elif document["kind"] == COMMAND:
                received = datetime.fromtimestamp(document["received_ms"] / 1000, tz=UTC)
                await self._isolated(event, self._command(document["command"], received))
            self.state = replace(self.state, usage=replace(self.state.usage, applied_through=offset))
            self.applied_any = True
        await self._report_to_contract()

    async def _isolated(self, event: EventT, step: Coroutine[Any, Any, None], item: InboxEvent | None = None) -> None:
        """Run one event's or command's step; should it fail, the workspace is as before it."""
        # first_seen is only written by a step's last statement, so a failed step left it alone.
        before, changed_before = self.state, dict(self.changed)
        try:
            await step
        except Exception as error:
            self.state, self.changed = before, changed_before
            value = item.as_json(self.workspace_id) if item is not None else None
            await dead_letter_failure(
                self.mw, self.publisher, "count_usage", event, error, key=self.workspace_id, value=value
            )

    async def _count(self, item: InboxEvent, position: int) -> None:
        cycle = self.state.profile.cycle
        rejection = event_time_rejection(item.occurred_at, item.received, cycle)
        if rejection is not None:
            self.mw.metrics.events_rejected.labels(rejection).inc()
            await self._dead_letter(item, rejection)
            return
        key = f"{self.workspace_id}{KEY_SEPARATOR}{item.event_id}"
        first = self.first_seen.get(key) or decode_first_seen(self.mw.tables.seen_event_ids.get(key))
        now_ms = int(item.received.timestamp() * 1000)
        if is_repeat(first, position, now_ms, self.window_ms):
            self.mw.metrics.events_repeated.inc()
            return
        reading = Reading(item.event_id, item.metric, item.quantity, item.occurred_at, item.conversation_id)
        usage = self.state.usage
        tally, change = count_reading(usage.tally(item.metric), reading, cycle, item.received)
        if change.after > MAX_AMOUNT:
            # Usage stays a number every JSON reader can hold; the event is refused, not wrapped.
            self.mw.metrics.events_rejected.labels(RejectCode.QUANTITY_OUT_OF_RANGE).inc()
            await self._dead_letter(item, RejectCode.QUANTITY_OUT_OF_RANGE)
            return
        self._observe_counted(item)
        self.state = replace(self.state, usage=replace(usage, tallies={**usage.tallies, item.metric: tally}))
        if change.after != change.before:
            self.changed[(item.metric, change.period)] = change.after
            await self._judge(item, change)
            if item.metric == FIN_RESOLUTIONS:
                self.state, transition = fin.on_usage(
                    self.state, self.workspace_id, change.after, change.period, item.received
                )
                await self._publish_transition(transition)
        if first is None or first.position != position:
            self.first_seen[key] = FirstSeen(now_ms, position)

    def _observe_counted(self, item: InboxEvent) -> None:
        metrics = self.mw.metrics
        now = time.time()
        metrics.events_counted.labels(item.metric).inc()
        metrics.processing_delay.observe(max(0.0, now - item.occurred_at.timestamp()))
        metrics.pipeline_latency.observe(max(0.0, now - item.received.timestamp()))

    async def _judge(self, item: InboxEvent, change: UsageChange) -> None:
        self.state, reached = judge_change(self.state, item.metric, change.before, change.after, change.period)
        if reached is not None:
            record = alert_record(self.state, self.workspace_id, item.metric, reached, item.event_id, item.received)
            self.mw.metrics.alerts.labels("workspace", str(reached.level)).inc()
            await self.publisher.publish(self.mw.channels.alerts, self.workspace_id, record)
            await self._request_mail(ALERT, record, record["recipients"])

    async def _publish_transition(self, transition: Transition | None) -> None:
        if transition is None:
            return
        self.mw.metrics.limit_transitions.labels(transition.reason).inc()
        channels = self.mw.channels
        await self.publisher.publish(
            channels.limits, self.workspace_id, fin.limit_record(self.workspace_id, transition)
        )
        notification = fin.notification_record(self.workspace_id, transition)
        if notification is not None:
            await self.publisher.publish(channels.notifications, self.workspace_id, notification)
            record = fin.limit_record(self.workspace_id, transition)
            await self._request_mail(FIN_DISABLED, record, list(self.state.profile.billing_contacts))

    async def _request_mail(self, kind: str, record: dict[str, Any], recipients: list[str]) -> None:
        # No SMTP server configured, or nobody to tell: the record on its topic is all there is.
        if not self.mw.settings.smtp_host or not recipients:
            return
        await self.publisher.publish(
            self.mw.channels.mail_requests, mail_id(kind, record), mail_request(kind, record, recipients)
        )

    async def _command(self, command: dict[str, Any], received: datetime) -> None:
        kind = command["type"]
        if kind == "alert_settings":
            self.state, result = apply_alert_settings(self.state, command, received)
            await self._answer(command, result)
            return
        if kind == "limit_settings":
            self.state, transition, result = fin.on_limit_settings(self.state, self.workspace_id, command, received)
            await self._answer(command, result)
            await self._publish_transition(transition)
            return
        if kind == fin.PERIOD_TICK:
            self.state, transition = fin.on_period_tick(self.state, self.workspace_id, received)
            await self._publish_transition(transition)
            return
        if kind == CONTRACT_OTHERS:
            self.state = take_contract_others(self.state, command)
            return
        before = self.state.profile
        profile, result = commands.apply_to_profile(self.state.profile, self.workspace_id, command)
        self.state = replace(self.state, profile=profile)
        if profile.contract is not None and profile.contract != before.contract:
            # A new contract learns what this workspace has used so far, and whom to tell.
            for metric, tally in self.state.usage.tallies.items():
                for period_tally in tally.periods:
                    self.changed[(metric, period_tally.period)] = period_tally.usage
            self.contacts_changed = True
        if profile.billing_contacts != before.billing_contacts:
            self.contacts_changed = True
        if result is not None:
            await self._answer(command, result)

    async def _answer(self, command: dict[str, Any], result: dict[str, Any]) -> None:
        self.mw.metrics.commands.labels(command["type"], result["status"]).inc()
        await self.publisher.publish(self.mw.channels.command_results, self.workspace_id, result)

    async def _dead_letter(self, item: InboxEvent, code: str) -> None:
        messages = {
            "occurred_in_future": "occurred_at is more than 5 minutes in the future",
            "period_closed": "the event's billing period ended more than 7 days ago",
            RejectCode.QUANTITY_OUT_OF_RANGE: f"usage would exceed {MAX_AMOUNT} in its period",
        }
        record = dead_letter(
            source_topic=item.origin.topic,
            partition=item.origin.partition,
            offset=item.origin.offset,
            key=item.origin.key,
            value=item.as_json(self.workspace_id),
            code=code,
            message=messages.get(code, code),
            at=datetime.now(UTC),
        )
        await self.publisher.publish(self.mw.channels.dead_letter, self.workspace_id, record)

    async def _report_to_contract(self) -> None:
        contract = self.state.profile.contract
        if contract is None:
            return
        if self.contacts_changed:
            message = contacts_message(self.workspace_id, self.state.profile.billing_contacts)
            await self.publisher.publish(self.mw.channels.contract_inbox, contract.contract_id, message)
        for (metric, period), usage in self.changed.items():
            report = WorkspaceReport(self.workspace_id, metric, period, usage, self.state.usage.applied_through)
            await self.publisher.publish(self.mw.channels.contract_inbox, contract.contract_id, report_message(report))

    def event_ids_to_remember(self) -> Iterator[tuple[str, bytes]]:
        for key, first in self.first_seen.items():
            yield key, encode_first_seen(first)

    def write_state(self) -> None:
        if self.applied_any:
            self.mw.tables.workspaces[self.workspace_id] = encode_workspace(self.state)
