"""Work that time, not an event, starts: a new billing period re-enables Fin for every
workspace that was disabled, even if no event arrives for it."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .codec import decode_workspace
from .fin import PERIOD_TICK, needs_period_tick
from .inbox import command_message

if TYPE_CHECKING:
    from .app import Meterwatch

log = logging.getLogger(__name__)

PERIOD_CHECK_SECONDS = 10.0


def register(mw: Meterwatch) -> None:
    @mw.app.timer(PERIOD_CHECK_SECONDS)
    async def start_new_periods() -> None:
        now = datetime.now(UTC)
        due = [
            workspace_id
            for workspace_id, raw in list(mw.tables.workspaces.items())
            if (state := decode_workspace(raw)) is not None and needs_period_tick(state, now)
        ]
        # The tick goes through the workspace's inbox, so it is applied in order with its usage.
        tick = command_message(int(time.time() * 1000), {"type": PERIOD_TICK})
        for workspace_id in due:
            try:
                await mw.channels.workspace_inbox.send(key=workspace_id.encode(), value=tick)
            except Exception:  # a rebalance moved the workspace away; its new owner ticks it
                log.warning("could not send the period tick for a workspace; will retry", exc_info=True)
