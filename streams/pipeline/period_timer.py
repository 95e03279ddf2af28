"""Work that time, not an event, starts: a new billing period re-enables Fin for every
workspace that was disabled, and a local midnight judges the forecasts of every workspace with
forecast warnings on (``core/steps/ticks.py``), even if no event arrives for it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from ...core.plain import PlainWorkspace
from ...core.steps.ticks import tick_due
from ...core.workspace import WorkspaceState
from ...models.internal import period_tick
from ..codec import decode_workspace
from ..runtime.kafka_client import start_plain_producer

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

PERIOD_CHECK_SECONDS = 10.0


class PeriodTickIndex:
    """Which workspaces need a period tick, decoding only the values that changed since the last
    pass. Decoding every workspace every pass blocked the event loop for seconds per 100,000
    workspaces (bench/period_timer.py); table values are replaced, never mutated, so a value
    equal to the one seen last time has the same due time.

    ``known`` maps a workspace id to the value counting last wrote or read for it and that
    value's state (counting's decoded values, ``streams/pipeline/counting.py``): a changed value
    counting holds is judged from its state, so counting tells the timer nothing as it writes.
    A value the table holds that neither the last pass saw nor counting holds (a recovery, a
    rebalance, a state counting no longer keeps) is decoded."""

    def __init__(
        self,
        decode: Callable[[bytes], WorkspaceState | None] = decode_workspace,
        known: Mapping[str, tuple[bytes, WorkspaceState | PlainWorkspace]] | None = None,
    ) -> None:
        self._decode = decode
        self._known = {} if known is None else known
        self._seen: dict[str, tuple[bytes, datetime | None]] = {}  # at the last pass

    def due(self, values: Iterable[tuple[str, bytes]], now: datetime) -> list[str]:
        seen: dict[str, tuple[bytes, datetime | None]] = {}
        due: list[str] = []
        last, held = self._seen, self._known
        for workspace_id, raw in values:
            # Judged from the same bytes, or from their own state: the right due time either way.
            known = last.get(workspace_id)
            if known is None or not _holds(known, raw):
                kept = held.get(workspace_id)
                if kept is not None and _holds(kept, raw):
                    known = (raw, tick_due(kept[1]))
                else:
                    state = self._decode(raw)
                    known = (raw, None if state is None else tick_due(state))
            # Workspaces no longer held (given up in a rebalance) drop out with the old dict.
            seen[workspace_id] = known
            at = known[1]
            if at is not None and at <= now:
                due.append(workspace_id)
        self._seen = seen
        return due


def _holds(known: tuple[bytes, Any], raw: bytes) -> bool:
    """Whether ``known`` (a due time or a state, with its bytes) was made from ``raw``: the same
    bytes, or equal ones read back."""
    return known[0] is raw or known[0] == raw


class TickSender:
    """Sends period ticks to workspace inboxes with a producer of its own, outside transactions.

    A tick answers no input, so under exactly_once there is no source offset whose commit would
    make it visible: sent through Faust it would wait in an open transaction until unrelated
    traffic on the same partition committed it, and a quiet workspace would never see it.
    A tick is safe to repeat (the Fin state machine ignores a period it already started, and a
    forecast warning is given once per level and period), so a
    plain producer is enough; not an idempotent one, which the embedded broker cannot give.
    """

    def __init__(self, mw: Meterwatch) -> None:
        self._mw = mw
        self._producer: AIOKafkaProducer | None = None

    async def send(self, workspace_id: str, tick: bytes) -> None:
        if self._producer is None:
            self._producer = await start_plain_producer(self._mw.bootstrap, self._mw.settings)
        topic = self._mw.channels.workspace_inbox.get_topic_name()
        key = workspace_id.encode()
        # The same partition Faust's own sends pick for this key: the one that owns the workspace.
        partition = self._mw.app.consumer.key_partition(topic, key, None)
        await self._producer.send_and_wait(topic, tick, key=key, partition=partition)

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


def register(mw: Meterwatch, index: PeriodTickIndex) -> None:
    """``index`` judges from counting's decoded values where it can (``PeriodTickIndex``)."""
    sender = TickSender(mw)

    @mw.app.timer(PERIOD_CHECK_SECONDS)
    async def start_new_periods() -> None:
        due = index.due(list(mw.tables.workspaces.items()), datetime.now(UTC))
        # The tick goes through the workspace's inbox, so it is applied in order with its usage.
        tick = period_tick(int(time.time() * 1000))
        for workspace_id in due:
            try:
                await sender.send(workspace_id, tick)
            except Exception:  # broker trouble: the next round sends it again
                log.warning("could not send the period tick for a workspace; will retry", exc_info=True)

    @mw.app.on_before_shutdown.connect
    async def stop_tick_sender(app: Any, **kwargs: Any) -> None:
        await sender.stop()
