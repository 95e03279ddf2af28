"""The Fin period timer's pass over a worker's workspaces (docs/operations.md 4.3).

Builds workspace values with the core's own counting function, then times one timer pass the
old way (decode every value: the baseline) against ``PeriodTickIndex`` (decode only values that
changed since the last pass), cold and warm, with a share of the values replaced between passes
as a busy worker would see in 10 s. The pass runs on the event loop, so its length is how long
counting and HTTP stand still every 10 s.

    .venv/bin/python bench/period_timer.py [--workspaces 100000] [--changed 0.05]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from meterwatch.core.alerts import AlertSetting, AlertState
from meterwatch.core.fin_limit import FinState, LimitSetting
from meterwatch.core.metering import MetricTally, Reading, WorkspaceUsage, count_reading
from meterwatch.core.periods import CALENDAR_MONTH_UTC
from meterwatch.core.steps.ticks import tick_due
from meterwatch.core.workspace import WorkspaceState
from meterwatch.streams.codec import decode_workspace, encode_workspace
from meterwatch.streams.pipeline.period_timer import PeriodTickIndex

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)
PERIOD = CALENDAR_MONTH_UTC.period_containing(NOW)
SHAPES = {  # metrics counted daily over 28 days, near A and B of docs/operations.md 4.2 (plus an alert)
    "A": ("messages_sent",),
    "B": ("messages_sent", "email", "sms", "whatsapp"),
}


def workspace_value(metrics: tuple[str, ...], fin_disabled: bool) -> bytes:
    tallies = {}
    for metric in metrics:
        tally = MetricTally(metric)
        for day in range(28):
            at = PERIOD.start + timedelta(days=day, hours=9)
            tally, _ = count_reading(tally, Reading(f"e{day}", metric, 3, at), CALENDAR_MONTH_UTC, at)
        tallies[metric] = tally
    alerts = {metrics[0]: AlertState(period=PERIOD, setting=AlertSetting(1000, True, True))}
    state = WorkspaceState(
        usage=WorkspaceUsage(MappingProxyType(tallies), applied_through=123_456),
        alerts=MappingProxyType(alerts),
    )
    if fin_disabled:
        state = replace(state, fin=FinState("ws", "disabled", PERIOD, 50, LimitSetting(50, True)))
    return encode_workspace(state)


def baseline_pass(values: list[tuple[str, bytes]], now: datetime) -> list[str]:
    """What the timer did before: decode every value, every pass."""
    due = []
    for workspace_id, raw in values:
        state = decode_workspace(raw)
        at = None if state is None else tick_due(state)
        if at is not None and at <= now:
            due.append(workspace_id)
    return due


def timed(run: Callable[..., list[str]], *args: object) -> tuple[float, list[str]]:
    started = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.05, help="share of values replaced between passes")
    args = parser.parse_args()
    rng = random.Random(7)
    after_period = PERIOD.end + timedelta(minutes=1)
    print(
        f"{args.workspaces:,} workspaces per worker, 1 in 100 with Fin disabled; {args.changed:.0%} replaced per pass"
    )
    print(f"{'values':<8}{'bytes':>8}{'baseline pass':>16}{'index, cold':>14}{'index, warm':>14}{'speed-up':>10}")
    for shape, metrics in SHAPES.items():
        plain, disabled = workspace_value(metrics, False), workspace_value(metrics, True)
        values = [(f"ws{i}", disabled if i % 100 == 0 else plain) for i in range(args.workspaces)]
        # Equal values are still separate objects in a real table: copy each one.
        values = [(ws, bytes(bytearray(raw))) for ws, raw in values]
        index = PeriodTickIndex()
        baseline_s, expected = timed(baseline_pass, values, after_period)
        cold_s, cold = timed(index.due, values, after_period)
        changed = set(rng.sample(range(args.workspaces), int(args.workspaces * args.changed)))
        values = [(ws, bytes(bytearray(raw)) if i in changed else raw) for i, (ws, raw) in enumerate(values)]
        warm_s, warm = timed(index.due, values, after_period)
        assert cold == warm == expected and len(expected) == len(range(0, args.workspaces, 100))
        print(
            f"{shape:<8}{len(plain):>8,}{baseline_s:>15.3f}s{cold_s:>13.3f}s{warm_s:>13.3f}s"
            f"{baseline_s / warm_s:>9.0f}x"
        )


if __name__ == "__main__":
    main()
