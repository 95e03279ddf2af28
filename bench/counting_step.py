"""The counting stage's pure work per event, in-process: no broker, no Faust, no dedupe store.

Single-event traffic spread over ``--workspaces`` workspaces is packed into inbox records of
1,000 rows, as stage one packs it, and counted in batches of ``--batch`` events the way
``streams/pipeline/counting.py`` counts them: the records split by workspace, each workspace's
messages through the step (``core/steps/workspace.py``), each changed value encoded and kept.
It prints the cost per event of each of the three, so a change to the step or the codec can be
judged in a few seconds, apart from the broker-bound figures of ``bench/run.py``. The cyclic
collector is off; with ``--collector`` it runs as in the worker (``meterwatch/collector.py``: off
during a batch, on again after it) and the time its collections take is printed too.

    .venv/bin/python bench/counting_step.py [--workspaces 100000] [--events 200000] [--batch 36000]
        [--collector]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import time
from datetime import UTC, datetime
from typing import Any

from meterwatch.core.metric_kinds import MESSAGES_SENT
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
    args = parser.parse_args()

    rng = random.Random(args.seed)
    received_ms = int(time.time() * 1000)
    occurred_at = datetime.fromtimestamp(received_ms / 1000 - 5, tz=UTC).isoformat()
    origins = [["usage.events", 0, 0, None, received_ms]]
    rows = [
        [f"ws-{rng.randrange(args.workspaces):06d}", f"ev-{i}", MESSAGES_SENT, 1, occurred_at, None, 0]
        for i in range(args.events)
    ]
    stored: dict[str, bytes] = {}
    decoded = DecodedValues(DECODED_KEPT)
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
        written: list[tuple[str, WorkspaceState]] = []
        for workspace_id, messages in by_workspace.items():
            state = decoded.load(workspace_id, stored.get(workspace_id))
            state, applied = step(workspace_id, state, messages, {}, CONFIG, out)
            if applied:
                written.append((workspace_id, state))
        stepped = time.perf_counter()
        for workspace_id, state in written:
            raw = encode_workspace(state)
            stored[workspace_id] = raw
            decoded.keep(workspace_id, raw, state)
        encoded = time.perf_counter()
        pause.__exit__(None, None, None)
        split_s += split - began
        step_s += stepped - split
        encode_s += encoded - stepped
        assert out.counted[MESSAGES_SENT] == len(batch), "every event is counted"
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
