"""The counting stage's pure work per event, in-process: no broker, no Faust, no dedupe store.

Single-event traffic spread over ``--workspaces`` workspaces is packed into inbox records of
1,000 rows, as stage one packs it, and counted in batches of ``--batch`` events the way
``streams/pipeline/counting.py`` counts them: the records split by workspace, each workspace's
messages through the step (``core/steps/workspace.py``) and its changed value encoded and kept.
It prints the cost per event of each of the three, so a change to the step or the codec can be
judged in a few seconds, apart from the broker-bound figures of ``bench/run.py``. The cyclic
collector is off; with ``--collector`` it runs as in the worker (``meterwatch/collector.py``: off
during a batch, on again after it) and the time its collections take is printed too.

Workspaces start empty and every event is a message sent. With ``--lived-in-days N`` each starts
with N days of usage of each of the seven metrics in the current period (and, with
``--fin-conversations C``, C Fin conversations), as a workspace late in its billing month, and
the events are SMS, email and WhatsApp messages at random: a value of many metrics, of which an
event changes one.

    .venv/bin/python bench/counting_step.py [--workspaces 100000] [--events 200000] [--batch 36000]
        [--collector] [--lived-in-days 28 [--fin-conversations 2000]]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import time
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from meterwatch.core.metering import MetricTally, PeriodTally, WorkspaceUsage
from meterwatch.core.metric_kinds import EMAIL, FIN_RESOLUTIONS, MESSAGES_SENT, METRIC_KINDS, SMS, WHATSAPP
from meterwatch.core.periods import CALENDAR_MONTH_UTC, BillingPeriod
from meterwatch.core.steps.workspace import BatchOutputs, Message, StepConfig, rows_by_workspace, step
from meterwatch.core.workspace import WorkspaceState
from meterwatch.models.internal import EVENTS_PER_MESSAGE
from meterwatch.streams.codec import encode_workspace
from meterwatch.streams.pipeline.counting import DECODED_KEPT, DecodedValues

from meterwatch import collector

CONFIG = StepConfig(window_ms=24 * 3600 * 1000, mail_enabled=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=36_000, help="events per counting batch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--collector", action="store_true", help="run the cyclic collector as the worker does")
    parser.add_argument(
        "--lived-in-days", type=int, default=0, help="days of usage of every metric each workspace starts with"
    )
    parser.add_argument(
        "--fin-conversations", type=int, default=0, help="with --lived-in-days: Fin conversations counted so far"
    )
    args = parser.parse_args()

    rng = random.Random(args.seed)
    received_ms = int(time.time() * 1000)
    occurred_at = datetime.fromtimestamp(received_ms / 1000 - 5, tz=UTC).isoformat()
    origins = [["usage.events", 0, 0, None, received_ms]]
    lived_in = args.lived_in_days > 0
    metrics = [SMS, EMAIL, WHATSAPP] if lived_in else [MESSAGES_SENT]
    rows = [
        [f"ws-{rng.randrange(args.workspaces):06d}", f"ev-{i}", rng.choice(metrics), 1, occurred_at, None, 0]
        for i in range(args.events)
    ]
    stored: dict[str, bytes] = {}
    decoded = DecodedValues(DECODED_KEPT)
    if lived_in:
        period = CALENDAR_MONTH_UTC.period_containing(datetime.fromisoformat(occurred_at))
        for index in range(args.workspaces):
            workspace_id = f"ws-{index:06d}"
            state = lived_in_state(rng, period, args.lived_in_days, args.fin_conversations)
            stored[workspace_id] = raw = encode_workspace(state)
            decoded.keep(workspace_id, raw, state)
    split_s = step_s = encode_s = 0.0
    offset = 0
    collecting = CollectionTime()
    if args.collector:
        collector.tune()
        gc.callbacks.append(collecting)
    else:
        gc.disable()
    for start in range(0, len(rows), args.batch):
        batch = rows[start : start + args.batch]
        pause = collector.paused() if args.collector else contextlib.nullcontext()
        pause.__enter__()
        began = time.perf_counter()
        by_workspace: dict[str, list[Message]] = {}
        keys: list[str] = []
        for first in range(0, len(batch), EVENTS_PER_MESSAGE):
            offset += 1
            record = batch[first : first + EVENTS_PER_MESSAGE]
            for workspace_id, message in rows_by_workspace(offset, record, origins, keys).items():
                by_workspace.setdefault(workspace_id, []).append(message)
        split = time.perf_counter()
        out = BatchOutputs()
        written: list[tuple[str, bytes]] = []
        encoding = 0.0
        for workspace_id, messages in by_workspace.items():
            state = decoded.load(workspace_id, stored.get(workspace_id))
            state, applied = step(workspace_id, state, messages, {}, CONFIG, out)
            if applied:
                # Encoded right after its step, as the worker does.
                before = time.perf_counter()
                raw = encode_workspace(state)
                written.append((workspace_id, raw))
                decoded.keep(workspace_id, raw, state)
                encoding += time.perf_counter() - before
        stored.update(written)
        stepped = time.perf_counter()
        pause.__exit__(None, None, None)
        split_s += split - began
        step_s += stepped - split - encoding
        encode_s += encoding
        assert sum(out.counted.values()) == len(batch), "every event is counted"
    gc.enable()
    if collecting in gc.callbacks:
        gc.callbacks.remove(collecting)

    per_event = 1e6 / len(rows)
    together = split_s + step_s + encode_s + collecting.seconds
    print(
        f"{len(rows):,} single events over {args.workspaces:,} workspaces, batches of {args.batch:,}: "
        f"µs per event: split {split_s * per_event:.2f}, step {step_s * per_event:.2f}, "
        f"encode {encode_s * per_event:.2f}"
        + (
            f", collector {collecting.seconds * per_event:.2f} ({collecting.full} full collections, "
            f"longest {collecting.longest * 1000:.0f} ms)"
            if args.collector
            else ""
        )
        + f", together {together * per_event:.2f}"
    )


def lived_in_state(rng: random.Random, period: BillingPeriod, days: int, conversations: int) -> WorkspaceState:
    """A workspace with ``days`` days of every metric's usage in ``period`` (only their number
    matters here, so they are the period's first days) and ``conversations`` Fin conversations."""
    first = period.start.date()
    tallies = {}
    for metric in METRIC_KINDS:
        daily = {first + timedelta(days=day): rng.randrange(1, 500) for day in range(days)}
        counted = frozenset(
            f"{rng.getrandbits(128):032x}" for _ in range(conversations if metric == FIN_RESOLUTIONS else 0)
        )
        tally = PeriodTally(period, sum(daily.values()), period.start, MappingProxyType(daily), counted)
        tallies[metric] = MetricTally(metric, (tally,))
    return WorkspaceState(usage=WorkspaceUsage(MappingProxyType(tallies), applied_through=0))


class CollectionTime:
    """A ``gc.callbacks`` entry that adds up the time collections take."""

    def __init__(self) -> None:
        self.seconds = self.longest = 0.0
        self.full = 0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.seconds += took
        self.longest = max(self.longest, took)
        self.full += info["generation"] == 2


if __name__ == "__main__":
    main()
