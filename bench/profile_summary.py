"""Summarise a py-spy "raw" (collapsed stacks) profile: where the worker's time goes.

    .venv/bin/python bench/profile_summary.py bench/results/profile-batch.raw

Each line of the input is ``[process …;[process …;]][thread (0x..);]frame;frame;...;leaf COUNT``
(outermost first), as ``py-spy record --format raw --idle --threads --function --subprocesses``
writes it. A sample whose leaf is a wait in select/epoll (an event loop with nothing to do) or a
lock/condition wait is idle. Faust runs the Kafka consumer in a thread of its own (mode
ServiceThread); the main thread runs the agents, the producer and the web server. Stage one runs
in a child process (``meterwatch.streams.pipeline.ingest_process``), summarised on its own. Percentages are
of the thread's samples.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

_IDLE_LEAF = re.compile(
    r"^(?:\w+\.)?(select|poll|epoll_wait|wait|acquire|_wait_for_tstate_lock|sleep) "
    r"\((?:selectors|threading|socket|time|<built-in>)\.py"
)
_SHORTEN = re.compile(r"\(.*?(?:site-packages|lib/python3\.\d+|work/main)/")


def short(frame: str) -> str:
    """``func (…/site-packages/faust/x.py:12)`` → ``func (faust/x.py:12)``."""
    return _SHORTEN.sub("(", frame)


def is_idle(frames: list[str]) -> bool:
    return bool(frames) and bool(_IDLE_LEAF.match(frames[-1]))


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """Stacks by thread id."""
    by_thread: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        frames = [short(f) for f in stack.split(";")]
        processes = []
        while frames and frames[0].startswith("process "):
            processes.append(frames[0])
            frames = frames[1:]
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread, frames = frames[0], frames[1:]
        if len(processes) > 1:  # a child of the worker
            thread = f"{_STAGE_ONE if 'ingest_process' in processes[-1] else 'child'} {thread}"
        by_thread[thread].append((frames, n))
    return by_thread


_STAGE_ONE = "stage one"


def _profile(stacks: list[tuple[list[str], int]], top: int) -> dict[str, Any]:
    total = sum(n for _, n in stacks)
    idle = sum(n for frames, n in stacks if is_idle(frames))
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        if is_idle(frames):
            self_time["(idle: event loop / lock wait)"] += n
            continue
        if frames:
            self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def pct(n: int) -> float:
        return 100.0 * n / total if total else 0.0

    return {
        "samples": total,
        "idle_samples": idle,
        "self": [(f, n, pct(n)) for f, n in self_time.most_common(top)],
        "inclusive": [(f, n, pct(n)) for f, n in inclusive.most_common(top * 4)],
    }


def summarise(path: Path, top: int = 25) -> dict[str, Any]:
    by_thread = load(path)
    main = None
    for thread, stacks in by_thread.items():
        if any("run_worker (" in f for frames, _ in stacks for f in frames):
            main = thread
            break
    threads = {
        thread: {
            "samples": sum(n for _, n in stacks),
            "idle_samples": sum(n for frames, n in stacks if is_idle(frames)),
        }
        for thread, stacks in by_thread.items()
    }
    stage_one = next((t for t in by_thread if t.startswith(_STAGE_ONE) and "MainThread" in t), None)
    others = [s for t, st in by_thread.items() if t not in (main, stage_one) for s in st]
    return {
        "threads": threads,
        "main_thread": main,
        "main": _profile(by_thread.get(main, []), top) if main else None,
        "stage_one_thread": stage_one,
        "stage_one": _profile(by_thread[stage_one], 15) if stage_one else None,
        "other_threads": _profile(others, 10),
    }


_INTERESTING = r"streams/|core/|models/|sinks/|faust/|aiokafka/|mode/|orjson|pydantic|json|logging"


def render(summary: dict[str, Any], max_inclusive: int = 30) -> str:
    lines = ["threads (samples, idle%):"]
    for thread, t in summary["threads"].items():
        role = (
            "main: agents, producer, web"
            if thread == summary["main_thread"]
            else "stage one's process: read, validate, forward"
            if thread == summary.get("stage_one_thread")
            else "other (Faust's consumer thread, ...)"
        )
        lines.append(
            f"  {thread} [{role}]: {t['samples']:,} samples, {100.0 * t['idle_samples'] / max(1, t['samples']):.1f}% idle"
        )
    main = summary["main"]
    if main is None:
        return "\n".join(lines + ["(main thread not found)"])
    lines.append("main thread, top self time (leaf function), % of its samples:")
    lines += [f"  {p:5.1f}%  {f}" for f, _n, p in main["self"]]
    lines.append("main thread, inclusive time (function anywhere on the stack), % of its samples:")
    shown = 0
    for f, _n, p in main["inclusive"]:
        if re.search(_INTERESTING, f) and "mode/worker.py" not in f and "mode/services.py" not in f:
            lines.append(f"  {p:5.1f}%  {f}")
            shown += 1
            if shown >= max_inclusive:
                break
    stage_one = summary.get("stage_one")
    if stage_one is not None:
        lines.append("stage one's main thread, top self time, % of its samples:")
        lines += [f"  {p:5.1f}%  {f}" for f, _n, p in stage_one["self"]]
    other = summary["other_threads"]
    lines.append(f"other threads, top self time, % of their {other['samples']:,} samples:")
    lines += [f"  {p:5.1f}%  {f}" for f, _n, p in other["self"][:8]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summarise(Path(sys.argv[1]))))
