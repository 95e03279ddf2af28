"""Work that time, not an event, starts: a new billing period re-enables Fin for every
workspace that was disabled, and a local midnight judges the forecasts of every workspace with
forecast warnings on (``core/steps/ticks.py``), even if no event arrives for it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from ...core.steps.ticks import tick_due
from ...core.workspace import WorkspaceState
from ...models.internal import period_tick
from ..codec import decode_workspace
from ..runtime.kafka_client import start_plain_producer

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger(__name__)

PERIOD_CHECK_SECONDS = 10.0
# The fields of a written (workspace id, value) pair
_WORKSPACE_ID, _VALUE = itemgetter(0), itemgetter(1)


class PeriodTickIndex:
    """Which workspaces need a period tick, decoding only the values that changed since the last
    pass. Decoding every workspace every pass blocked the event loop for seconds per 100,000
    workspaces (bench/period_timer.py); table values are replaced, never mutated, so a value
    equal to the one seen last time has the same due time.

    Counting notes each value it writes, with the due time of the state it encoded, right after
    the table holds it; a value the table holds that neither the last pass saw nor counting
    noted since (a recovery, a rebalance) is decoded."""

    def __init__(self, decode: Callable[[bytes], WorkspaceState | None] = decode_workspace) -> None:
        self._decode = decode
        self._seen: dict[str, tuple[bytes, datetime | None]] = {}  # at the last pass
        self._noted: dict[str, tuple[bytes, datetime | None]] = {}  # written since the last pass

    def note(self, written: Sequence[tuple[str, bytes]], due: Sequence[datetime | None]) -> None:
        """Counting has just written ``written``, ``(workspace id, value)`` pairs whose states
        are due for a tick at ``due`` (``tick_due``, in the same order)."""
        self._noted.update(zip(map(_WORKSPACE_ID, written), zip(map(_VALUE, written), due, strict=True), strict=True))

    def due(self, values: Iterable[tuple[str, bytes]], now: datetime) -> list[str]:
        seen: dict[str, tuple[bytes, datetime | None]] = {}
        due: list[str] = []
        last, noted = self._seen, self._noted
        for workspace_id, raw in values:
            # Either judged from the same bytes has the right due time.
            known = noted.get(workspace_id)
            if known is None or not _holds(known, raw):
                known = last.get(workspace_id)
                if known is None or not _holds(known, raw):
                    state = self._decode(raw)
                    known = (raw, None if state is None else tick_due(state))
            # Workspaces no longer held (given up in a rebalance) drop out with the old dicts.
            seen[workspace_id] = known
            at = known[1]
            if at is not None and at <= now:
                due.append(workspace_id)
        self._seen, self._noted = seen, {}
        return due


def _holds(known: tuple[bytes, datetime | None], raw: bytes) -> bool:
    """Whether ``known`` was judged from ``raw``: the same bytes, or equal ones read back."""
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
    """``index`` is kept up to date by counting (``PeriodTickIndex.note``) as it writes."""
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
