"""Stage two: count each workspace's usage from its inbox, exactly once.

A batch is judged partition by partition: its inbox records are split by workspace, the ids of
every event are looked up in the dedupe store at once, and each workspace's messages go through
the pure step (``core/steps/workspace.py``) in order; then, once the ids it counted are
acknowledged, every partition writes its values (each read once and written once a batch) and
its outputs. A message at or below the workspace's ``applied_through`` was already applied (a
replay after a crash) and is skipped; an ``event_id`` already counted by another delivery within
the window is a repeat.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING, NamedTuple

import orjson
from faust.types import EventT

from ... import collector
from ...core.alert_history import added, decode_history, encode_history, entries_of
from ...core.dedupe import FirstSeen, decode_first_seen
from ...core.plain import NEW_WORKSPACE, PlainWorkspace, plain_of
from ...core.steps.workspace import BatchOutputs, CommandMessage, Message, StepConfig, rows_by_workspace, step
from ...core.workspace import WorkspaceState
from ...models.internal import COMMAND, O_RECEIVED_MS, ROWS, USAGE, InboxRecord, legacy_rows
from ...sinks.outputs import Sinks, compose
from ..codec import decode_workspace, encode_workspace
from ..metrics import observe_ages
from ..runtime.applied_marks import Rewinder, encode_mark, mark_key
from ..runtime.batches import finish, handle_batch, source_parts
from ..runtime.consumer import rewind_to_marks
from ..runtime.partition_context import acting_for
from .dead_letters import dead_letter_failure

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

# A batch is bounded by inbox records; a record carries up to 1,000 events, and the ingest
# stage fills records only as far as its own batch goes, so a take of 64 records is a few
# thousand events when busy and one record when quiet.
BATCH_MESSAGES = 64
# Once a batch is done, the next waits at most this long for more records. At a steady load what
# arrived while the last batch ran is the next batch; every millisecond waited on top of it is
# added to the delay of every alert in it.
BATCH_WITHIN_SECONDS = 0.004
# Decoded values kept in memory, so a busy workspace is not decoded again in every batch. A
# value is only reused while the table still holds the very bytes it was decoded from.
DECODED_KEPT = 100_000


def register(mw: Meterwatch, decoded: DecodedValues) -> None:
    """``decoded``: the values kept in memory (``DecodedValues``), which the period timer reads too."""
    marks = mw.tables.applied_through
    rewind_to_marks(
        mw.app,
        Rewinder(mw.channels.workspace_inbox.get_topic_name(), marks.stored, mw.metrics.inbox_rewinds.inc),
    )

    @mw.app.agent(mw.channels.workspace_inbox, name=f"{mw.settings.group_id}.count_usage")
    async def count_usage(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(BATCH_MESSAGES, within=BATCH_WITHIN_SECONDS):
            await handle_batch(mw, "count", events, lambda mw, events: count_batch(mw, events, decoded))


class DecodedValues:
    """workspace id -> (the table's bytes, their decoded state), at most ``limit`` of them.

    A state is kept in its plain form (``core/plain.py``) when it has one: a workspace with
    nothing but usage, the most common, then takes a few objects instead of a dozen. The period
    timer reads ``values`` too (``PeriodTickIndex``), so that it need not decode them again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.values: dict[str, tuple[bytes, WorkspaceState | PlainWorkspace]] = {}

    def load(self, workspace_id: str, raw: bytes | None) -> WorkspaceState | PlainWorkspace:
        if raw is None:
            return NEW_WORKSPACE  # a workspace the table has never held (frozen, so one serves all)
        kept = self.values.get(workspace_id)
        if kept is not None and kept[0] is raw:
            return kept[1]
        return self.keep(workspace_id, raw, decode_workspace(raw) or WorkspaceState())

    def keep(
        self, workspace_id: str, raw: bytes, state: WorkspaceState | PlainWorkspace
    ) -> WorkspaceState | PlainWorkspace:
        """Keep ``state``, the value of ``raw``; the form kept."""
        if type(state) is WorkspaceState:
            state = plain_of(state) or state
        values = self.values
        if workspace_id not in values and len(values) >= self.limit:
            # Drop the oldest tenth: cheaper than an LRU's bookkeeping on every read.
            for key in list(values)[: self.limit // 10 or 1]:
                del values[key]
        values[workspace_id] = (raw, state)
        return state


async def count_batch(mw: Meterwatch, events: list[EventT], decoded: DecodedValues) -> None:
    """Count a batch in two passes over its partitions, with one wait between them.

    Event ids are remembered before the counts they guard are written: were the counts kept and
    the ids lost (a crash between the two writes, without transactions), a later copy of an event
    would be counted again. Every partition is judged and sends its ids first, then the batch
    waits once for all of them, then every partition writes its counts and outputs: two round
    trips to the broker a batch, however many partitions it holds."""
    with mw.metrics.batch_seconds.labels("count").time(), collector.paused():
        mw.metrics.batch_size.labels("count").observe(len(events))
        sinks = compose(mw.channels, webhooks=bool(mw.settings.webhook_urls))
        config = StepConfig(
            window_ms=int(mw.settings.dedupe_window.total_seconds() * 1000),
            mail_enabled=bool(mw.settings.smtp_host),
            command_max_age_ms=mw.settings.signed_command_max_age_ms,
            max_billing_contacts=mw.settings.max_billing_contacts,
            max_mails_per_hour=mw.settings.max_mails_per_workspace_hour,
        )
        judged = await _judge_parts(mw, source_parts(events), sinks, decoded, config)
        await mw.tables.seen_event_ids.wait_for_writes()
        for part in judged:
            with acting_for(part.events[-1]):
                await _write_part(mw, part, sinks)
        await finish(mw, sinks)


class _JudgedPart(NamedTuple):
    """One source partition of a batch, judged: the values to write and what to publish."""

    partition: int
    events: list[EventT]
    written: list[tuple[str, bytes]]
    out: BatchOutputs
    event_at: dict[int, EventT]  # inbox offset -> its event, for the dead letter of a failure


class _SplitPart(NamedTuple):
    """One source partition of a batch, split by workspace (``_split_by_workspace``)."""

    partition: int
    events: list[EventT]
    by_workspace: dict[str, list[Message]]
    event_at: dict[int, EventT]
    lookup: Future[list[bytes | None]] | None  # the dedupe store's values of the part's keys
    keys: list[str]


async def _judge_parts(
    mw: Meterwatch,
    parts: list[tuple[int, list[EventT]]],
    sinks: Sinks,
    decoded: DecodedValues,
    config: StepConfig,
) -> list[_JudgedPart]:
    """Run every part's workspaces through the step and send the ids each counted.

    Each part's ids are looked up on the dedupe store's lookup thread as soon as the part is
    split, so the store reads while the next parts are split and the earlier ones stepped.
    Nothing awaits until every lookup has ended; the records that could not be read are
    dead-lettered after that."""
    split: list[_SplitPart] = []
    unreadable: list[tuple[EventT, Exception]] = []
    try:
        for partition, part in parts:
            by_workspace, keys, since_ms, event_at = _split_by_workspace(part, unreadable)
            lookup = mw.tables.seen_event_ids.get_many_soon(partition, keys, since_ms) if keys else None
            split.append(_SplitPart(partition, part, by_workspace, event_at, lookup, keys))
        judged = []
        for part in split:
            with acting_for(part.events[-1]):
                judged.append(_judge_part(mw, part, decoded, config))
    finally:
        futures.wait([part.lookup for part in split if part.lookup is not None])
    for event, error in unreadable:
        await dead_letter_failure(mw, sinks, "count_usage", event, error)
    return judged


def _judge_part(mw: Meterwatch, part: _SplitPart, decoded: DecodedValues, config: StepConfig) -> _JudgedPart:
    """Run the part's workspaces through the step and send the ids it counted.

    Each changed state is encoded right after its step, while it is still in the processor's
    caches: over many workspaces, coming back to it after the whole part costs more than the
    encoding itself."""
    seen = _seen(part.keys, part.lookup.result()) if part.lookup is not None else {}
    stored = mw.tables.workspaces.stored()
    out = BatchOutputs()
    written: list[tuple[str, bytes]] = []
    load, keep = decoded.load, decoded.keep
    for workspace_id, messages in part.by_workspace.items():
        state, applied = step(workspace_id, load(workspace_id, stored.get(workspace_id)), messages, seen, config, out)
        if applied:
            raw = encode_workspace(state)
            written.append((workspace_id, raw))
            keep(workspace_id, raw, state)
    mw.tables.seen_event_ids.remember(out.first_seen)
    return _JudgedPart(part.partition, part.events, written, out, part.event_at)


async def _write_part(mw: Meterwatch, part: _JudgedPart, sinks: Sinks) -> None:
    """Write the part's values and hand its outputs and failures to the sinks."""
    mw.tables.workspaces.put_many(part.partition, part.written)
    # The part's mark (streams/runtime/applied_marks.py): under exactly_once in the same
    # transaction as the values. Otherwise a mark may reach its changelog while the values do
    # not; the batch then fails uncommitted, and a commit behind a mark asks for no rewind.
    last = part.events[-1].message.offset
    mw.tables.applied_through.put_many(part.partition, [(mark_key(part.partition), encode_mark(last))])
    out = part.out
    _write_history(mw, part.partition, out)
    await sinks.publish(out.outputs)
    for failure in out.failures:
        await dead_letter_failure(
            mw,
            sinks,
            "count_usage",
            part.event_at[failure.inbox_offset],
            failure.error,
            key=failure.workspace_id,
            value=failure.value,
        )
    _observe(mw, out)


def _write_history(mw: Meterwatch, partition: int, out: BatchOutputs) -> None:
    """Add the part's alerts and limit transitions to their workspaces' histories, in the same
    partition (and, under exactly_once, the same transaction) as the records themselves."""
    found = entries_of(out.outputs, webhooks=bool(mw.settings.webhook_urls))
    if not found:
        return
    table = mw.tables.alert_history
    stored = table.stored()
    writes = [
        (workspace_id, encode_history(added(decode_history(stored.get(workspace_id)), entries)))
        for workspace_id, entries in found.items()
    ]
    table.put_many(partition, writes)


_NO_EVENTS = 2**63  # the earliest Kafka time of a part without usage events: later than any


def _split_by_workspace(
    part: list[EventT], unreadable: list[tuple[EventT, Exception]]
) -> tuple[dict[str, list[Message]], list[str], int, dict[int, EventT]]:
    """The part's messages per workspace in inbox order, the dedupe keys of their events, the
    earliest Kafka time of those events, and each message's event by offset (for the dead
    letter of a failure). A record that cannot be read is added to ``unreadable``."""
    by_workspace: dict[str, list[Message]] = {}
    keys: list[str] = []
    since_ms = _NO_EVENTS
    event_at: dict[int, EventT] = {}
    for event in part:
        message = event.message
        offset = message.offset
        event_at[offset] = event
        try:
            document: InboxRecord = orjson.loads(message.value)
            kind = document["kind"]
            if kind == COMMAND:
                workspace_id = message.key.decode()
                command = CommandMessage(offset, document["command"], document["received_ms"])
                by_workspace.setdefault(workspace_id, []).append(command)
                continue
            if kind == ROWS:
                rows, origins = document["rows"], document["origins"]
            elif kind == USAGE:
                rows, origins = legacy_rows(document, message.key.decode())
            else:
                raise ValueError(f"unknown inbox record kind {kind!r:.40}")
            for origin in origins:
                if origin[O_RECEIVED_MS] < since_ms:
                    since_ms = origin[O_RECEIVED_MS]
            for workspace_id, rows_message in rows_by_workspace(offset, rows, origins, keys).items():
                by_workspace.setdefault(workspace_id, []).append(rows_message)
        except Exception as error:
            unreadable.append((event, error))
    return by_workspace, keys, since_ms, event_at


def _seen(keys: list[str], values: list[bytes | None]) -> dict[str, FirstSeen | None]:
    """What the dedupe store knew of ``keys`` (``values``, as read), by key."""
    return {key: decode_first_seen(value) for key, value in zip(keys, values, strict=True) if value is not None}


def _observe(mw: Meterwatch, out: BatchOutputs) -> None:
    """The batch's figures, one metric call per label rather than one per event."""
    metrics = mw.metrics
    for metric, n in out.counted.items():
        metrics.events_counted.labels(metric).inc(n)
    for code, n in out.rejected.items():
        metrics.events_rejected.labels(code).inc(n)
    for level, n in out.alerts.items():
        metrics.alerts.labels("workspace", level).inc(n)
    for reason, n in out.transitions.items():
        metrics.limit_transitions.labels(reason).inc(n)
    for (kind, status), n in out.commands.items():
        metrics.commands.labels(kind, status).inc(n)
    if out.repeated:
        metrics.events_repeated.inc(out.repeated)
    if out.replayed:
        metrics.messages_replayed.inc(out.replayed)
    if out.occurred:
        now_ms = int(time.time() * 1000)
        observe_ages(metrics.processing_delay, now_ms, out.occurred)
        observe_ages(metrics.pipeline_latency, now_ms, out.received)
