"""Stage one: read ``usage.events``, dead-letter what cannot be accepted, and forward the rest to
the workspace inbox, keyed by workspace, so that mis-keyed messages are still counted on the
partition that owns the workspace.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from faust.types import EventT

from ..models.outputs import dead_letter
from ..models.usage_event import UsageEvent, parse_usage_message
from ..sinks.kafka import TopicPublisher
from .batches import by_source_partition, finish, handle_batch
from .inbox import EVENTS_PER_MESSAGE, Origin, usage_message
from .poison import dead_letter_failure

if TYPE_CHECKING:
    from .app import Meterwatch

log = logging.getLogger(__name__)

BATCH_MESSAGES = 1000
# Short enough that alerts leave within a second of their event even under light load.
BATCH_WITHIN_SECONDS = 0.05


def register(mw: Meterwatch) -> None:
    channels = mw.channels

    @mw.app.agent(channels.usage_events, name=f"{mw.settings.group_id}.route_usage_events")
    async def route_usage_events(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(BATCH_MESSAGES, within=BATCH_WITHIN_SECONDS):
            await handle_batch(mw, events, forward_usage)


async def forward_usage(mw: Meterwatch, events: list[EventT]) -> None:
    with mw.metrics.batch_seconds.labels("ingest").time():
        mw.metrics.batch_size.labels("ingest").observe(len(events))
        publisher = TopicPublisher()
        for _, part in by_source_partition(events):
            await _forward_part(mw, part, publisher)
        await finish(mw, publisher)


async def _forward_part(mw: Meterwatch, events: list[EventT], publisher: TopicPublisher) -> None:
    by_workspace: dict[str, list[tuple[UsageEvent, Origin, int]]] = defaultdict(list)
    for event in events:
        try:
            await _route_message(mw, event, by_workspace, publisher)
        except Exception as error:
            await dead_letter_failure(mw, publisher, "route_usage_events", event, error)
    for workspace_id, items in by_workspace.items():
        for start in range(0, len(items), EVENTS_PER_MESSAGE):
            chunk = items[start : start + EVENTS_PER_MESSAGE]
            await publisher.publish(mw.channels.workspace_inbox, workspace_id, usage_message(chunk))


async def _route_message(
    mw: Meterwatch,
    event: EventT,
    by_workspace: dict[str, list[tuple[UsageEvent, Origin, int]]],
    publisher: TopicPublisher,
) -> None:
    message = event.message
    received_ms = int(message.timestamp * 1000)
    accepted, rejected = parse_usage_message(message.value)
    origin = Origin(message.topic, message.partition, message.offset, message.key)
    for rejection in rejected:
        mw.metrics.events_rejected.labels(rejection.code).inc()
        await publisher.publish(
            mw.channels.dead_letter,
            rejection.workspace_id,
            dead_letter(
                source_topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                key=message.key,
                value=rejection.value if rejection.value is not None else message.value,
                code=rejection.code,
                message=rejection.message,
                at=datetime.now(UTC),
            ),
        )
    for usage_event in accepted:
        by_workspace[usage_event.workspace_id].append((usage_event, origin, received_ms))
