"""One log line per rebalance and per table recovery.

Faust's own loggers are kept at WARNING (``meterwatch.logs``) because at INFO they print
multi-line tables on every rebalance; these lines say what an operator needs in one line each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import faust

from ...logs import FAUST_SERVICES_LOG
from ..http.usage_api import broker_reachable

if TYPE_CHECKING:
    from ..app import Meterwatch

log = logging.getLogger("meterwatch.lifecycle")

WATCH_RECOVERY_EVERY_SECONDS = 1.0


def partitions_summary(partitions: Iterable[Any]) -> str:
    """``3 partitions: a-events[1,3] b-inbox[1]``, topics and partitions sorted."""
    by_topic: dict[str, list[int]] = {}
    for tp in partitions:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    total = sum(len(numbers) for numbers in by_topic.values())
    topics = " ".join(
        f"{topic}[{','.join(str(n) for n in sorted(numbers))}]" for topic, numbers in sorted(by_topic.items())
    )
    return f"{total} partitions" + (f": {topics}" if topics else "")


def records_behind(highwaters: Counter[Any], offsets: Counter[Any]) -> int:
    """Changelog records still to read; an offset of -1 or None means nothing read yet, and a
    highwater of None (not known yet) counts as nothing to read."""
    behind = 0
    for tp, highwater in highwaters.items():
        read = offsets.get(tp)
        if highwater is not None:
            behind += max(0, highwater - (read if read is not None else -1))
    return behind


class RebalanceLog(faust.Sensor):
    """Faust calls these around every rebalance; ``on_rebalance_end`` comes after table recovery."""

    logger = FAUST_SERVICES_LOG

    def on_rebalance_start(self, app: faust.App) -> dict:
        log.info("rebalance #%d: started", app.rebalancing_count)
        return {"started": time.monotonic()}

    def on_rebalance_end(self, app: faust.App, state: dict) -> None:
        recovery = app.tables.recovery
        log.info(
            "rebalance #%d: done in %.1fs; tables ready on %d changelog partitions; consuming",
            app.rebalancing_count,
            time.monotonic() - state["started"],
            len(recovery.active_tps),
        )


def log_ingest_revoked(group: str, revoked: Iterable[Any]) -> None:
    """The ingest consumer's group (streams/pipeline/ingest.py) rebalances apart from Faust's: a line each."""
    if revoked:
        log.info("rebalance: giving up %s (group %s)", partitions_summary(revoked), group)


def log_ingest_assigned(group: str, assigned: Iterable[Any]) -> None:
    log.info("rebalance: assigned %s (group %s)", partitions_summary(assigned), group)


def register(mw: Meterwatch) -> None:
    app = mw.app
    app.sensors.add(RebalanceLog())

    @app.on_partitions_revoked.connect
    async def log_revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        if revoked:
            log.info("rebalance: giving up %s", partitions_summary(revoked))

    @app.on_partitions_assigned.connect
    async def log_assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        log.info("rebalance: assigned %s", partitions_summary(assigned))

    @app.task
    async def log_long_recovery_and_broker_outages() -> None:
        # A recovery that takes longer than a second gets a line saying how far it has to go,
        # and another every 30 s while it lasts: the only sign of progress a stuck-looking
        # worker gives. Losing and regaining the broker get a line each.
        recovery = app.tables.recovery
        last_said = 0.0
        reachable: bool | None = True
        while True:
            await asyncio.sleep(WATCH_RECOVERY_EVERY_SECONDS)
            now_reachable = broker_reachable(app)
            if now_reachable is not None and now_reachable != reachable:
                if now_reachable:
                    log.info("broker: reachable again; consuming resumes")
                else:
                    log.warning("broker: no connection to any broker; reconnecting (health says broker_unreachable)")
                reachable = now_reachable
            if not recovery.in_recovery:
                last_said = 0.0
                continue
            if time.monotonic() - last_said >= 30.0:
                last_said = time.monotonic()
                try:
                    to_go = records_behind(recovery.active_highwaters, recovery.active_offsets)
                except Exception:  # Faust's bookkeeping mid-change: a log line must never stop the worker
                    continue
                log.info(
                    "recovery: restoring tables from %d changelog partitions, %d records to go",
                    len(recovery.active_tps),
                    to_go,
                )
