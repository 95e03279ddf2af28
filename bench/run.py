"""meterwatch throughput, latency and memory benchmark: one command, one machine, one run.

    .venv/bin/python bench/run.py [--events N] [--quick] [--shapes single1k,single100k,batch]
                                  [--skip-two-workers] [--skip-latency] [--skip-memory]
    .venv/bin/python bench/run.py --shapes= --skip-latency    # the memory step alone

On the embedded broker (or --bootstrap), for each shape (single events over 1,000 workspaces,
single events over 100,000 workspaces, batches of 100 events each for one of 1,000 workspaces),
the events are produced to a topic of their own before any consumer starts, then read side by
side by: a raw aiokafka consumer (orjson only, and with meterwatch's parse_usage_message), a bare
Faust agent, a quix-streams application summing quantity per key in RocksDB state, and a real
``meterwatch worker`` (clock from /health 200 to meterwatch_events_counted_total reaching every
event, exactness then checked through /usage). On single events over 1,000 workspaces, two
workers in one group too. Then alert latency at half the single-event peak, and the worker's RSS
after 1M and 5M distinct event ids. Figures go to stdout and bench/results/latest.json.

Every worker imports a copy of the meterwatch package taken when the run starts (--live-code:
the working tree as each worker finds it). A phase that fails or times out (--phase-timeout) is
recorded as failed, with how far it got, and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
import orjson
from harness import RESULTS, log, machine_info, proc_status, repo_state, tansu_version, versions
from latency import run_latency
from memory import run_dedupe_memory
from phases import guarded, run_shape
from producing import PRODUCER_SETTINGS, make_shape
from report import report
from worker import worker_settings

SHAPES = ("single1k", "single100k", "batch")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="events per shape (default 200000; at least 200000 over 100,000 workspaces, 1000000 in batches)",
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help=f"shapes to run, comma-separated ({','.join(SHAPES)}); empty (--shapes=) for none",
    )
    parser.add_argument("--quick", action="store_true", help="skip the 5,000,000-id memory step")
    parser.add_argument("--skip-memory", action="store_true", help="skip the memory step")
    parser.add_argument("--skip-latency", action="store_true", help="skip the alert latency phase")
    parser.add_argument("--skip-two-workers", action="store_true", help="skip the two-worker phase")
    parser.add_argument("--bootstrap", help="use this broker instead of a fresh embedded one")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of every topic (meterwatch's default, 8)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch message")
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=600.0,
        help="seconds a throughput phase may take before it is recorded as failed",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=180.0, help="seconds a worker may take to answer /health 200"
    )
    parser.add_argument(
        "--check-budget",
        type=float,
        default=120.0,
        help="seconds for the /usage exactness check before it falls back to a sample",
    )
    parser.add_argument(
        "--latency-rate", type=float, help="peak rate R for the latency phase (default: measured on single1k)"
    )
    parser.add_argument("--latency-seconds", type=float, default=30.0)
    parser.add_argument("--latency-workspaces", type=int, default=300, help="workspaces given an alert setting")
    parser.add_argument("--dedupe-first", type=int, default=1_000_000)
    parser.add_argument("--dedupe-second", type=int, default=5_000_000)
    parser.add_argument("--dedupe-timeout", type=float, default=900.0, help="seconds allowed for the 1M→5M step")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample each meterwatch worker phase with py-spy (bench/results/profile-*.txt)",
    )
    parser.add_argument(
        "--live-code",
        action="store_true",
        help="let each worker import the working tree as it is when it starts (default: a copy taken at the start of the run)",
    )
    parser.add_argument(
        "--worker-only",
        action="store_true",
        help="run only the meterwatch worker of each shape (no raw ceiling, bare Faust or peer): for profiling",
    )
    parser.add_argument(
        "--ingest-in-worker",
        action="store_true",
        help="run stage one inside the worker process (METERWATCH_INGEST_PROCESS=false) rather than beside it",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    unknown = set(filter(None, args.shapes.split(","))) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shape(s): {', '.join(sorted(unknown))}")
    if args.profile:
        from profiling import find_py_spy

        if find_py_spy() is None:
            parser.error("--profile: py-spy not found")
    return args


def configuration(args: argparse.Namespace, shapes: list[Any]) -> dict[str, str]:
    example = orjson.loads(make_shape("single1k", 1, 1).encode(random.Random(0), 0, 1)[0][1])
    return {
        "shapes": "; ".join(f"{s.name}: {s.label}, {s.events:,} events in {s.messages:,} messages" for s in shapes),
        "partitions (every topic)": str(args.partitions),
        "event": orjson.dumps(example).decode() + " (distinct random 128-bit event_id each)",
        "messages": "message m belongs to workspace m mod W and is keyed by it (murmur2 partitioning); a batch is a JSON array of one workspace's events",
        "producer": f"aiokafka send_batch, {PRODUCER_SETTINGS}; every event produced before any consumer starts; not timed",
        "raw ceiling": "AIOKafkaConsumer(group_id=None) + getmany + orjson.loads, or + parse_usage_message; first→last message",
        "bare Faust": "faust.App(raw serializers, at_least_once, memory store), one agent: async for _ in stream; first→last message",
        "quix peer": "quixstreams Application, auto_offset_reset earliest, own group and state dir, at-least-once, changelogs on; "
        "sdf.apply(stateful=True): state.get/set of the quantity summed per message key; first→last message; exact = final per-key sums",
        "meterwatch": "python -m meterwatch worker, default settings; clock from first GET /health 200 (polled every 50 ms) to "
        "meterwatch_events_counted_total (GET /metrics, polled every 50 ms) reaching every event; then GET /usage checked against what was sent",
        "two workers": "same app id, two processes (own web ports and data dirs) on the single1k topic; clock from both /health 200 to "
        "the counters' sum reaching every event; events counted before the clock are left out of the rate",
        "alert latency": f"fresh worker; alert_settings (early warnings) on {args.latency_workspaces} of 1,000 workspaces, thresholds spread over the run; "
        f"single events at R/2 for {args.latency_seconds:.0f}s; delay = alert record's Kafka timestamp (and receive time) − triggered_at",
        "memory": f"separate worker, batch messages; {args.dedupe_first:,} ids produced before it starts; "
        + (
            "5M step skipped (--quick)"
            if args.quick
            else f"then {args.dedupe_second - args.dedupe_first:,} more produced while it runs"
        )
        + "; RSS read 3 s after the counter reached the total",
        "event loop": "asyncio default (no uvloop) in the bench, raw ceiling and bare Faust; quix-streams has no event loop (librdkafka)",
    }


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)


def main() -> int:
    args = parse_args()
    # `kill` (SIGTERM) unwinds like Ctrl-C, so every phase stops its children and the broker and
    # the work directory go; a shell that started us in the background may have left SIGINT ignored.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    shapes = [make_shape(name, args.events, args.batch_size) for name in SHAPES if name in args.shapes.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("%m%d%H%M%S")
    work = Path(tempfile.mkdtemp(prefix=f"meterwatch-bench-{tag}-"))
    log_dir = RESULTS / f"logs-{tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.ingest_in_worker:
        worker_settings["METERWATCH_INGEST_PROCESS"] = "false"
    if not args.live_code and "PYTHONPATH" not in os.environ:
        harness.code_path = harness.snapshot_code(work / "code")
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "command": "bench/run.py "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if v not in (None, False)),
        "machine": machine_info(),
        "versions": versions(),
        "repo": {
            **repo_state(),
            "code": "a copy of the working tree taken at the start of the run"
            if harness.code_path
            else "the working tree (or PYTHONPATH) as each worker found it at its start",
        },
        "logs": str(log_dir),
        "config": configuration(args, shapes),
        "shapes": [],
    }

    def save(partial: bool = True) -> None:
        # A run cut short still leaves what it measured.
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(orjson.dumps({**results, "partial": partial}, option=orjson.OPT_INDENT_2))

    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap = args.bootstrap
            results["broker"] = {"kind": "external", "bootstrap": bootstrap}
        else:
            from meterwatch.brokers.embedded import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker(log_path=log_dir / "broker.log"))
            bootstrap = broker.bootstrap
            results["broker"] = {
                "kind": f"embedded ({tansu_version()}, memory storage, no transactions)",
                "bootstrap": bootstrap,
                "pid": broker.pid,
            }
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        log(f"broker: {results['broker']['kind']} at {bootstrap}; work dir {work}; logs {log_dir}")

        for shape in shapes:
            # Producing can fail too (a broker in trouble); the other shapes still run.
            outcome = guarded(shape.name, lambda s=shape: run_shape(args, s, bootstrap, tag, work, log_dir))
            results["shapes"].append({"shape": shape.name, "label": shape.label, "events": shape.events, **outcome})
            save()
        if not args.skip_latency:
            peak = args.latency_rate
            if peak is None:
                single = next((s for s in results["shapes"] if s["shape"] == "single1k"), {})
                peak = (single.get("meterwatch") or {}).get("events_per_s")
            if peak:
                log(f"latency: alert latency at {peak / 2:,.0f} events/s (half of {peak:,.0f}) ...")
                results["latency"] = guarded("latency", lambda: run_latency(args, bootstrap, peak, tag, work, log_dir))
            else:
                results["latency"] = {
                    "error": "no peak rate: the single1k meterwatch phase did not run or failed (pass --latency-rate)"
                }
            save()
        if not args.skip_memory:

            def on_step(partial: dict[str, Any]) -> None:
                results["memory"] = partial
                save()

            outcome = guarded("memory", lambda: run_dedupe_memory(args, bootstrap, tag, work, log_dir, on_step=on_step))
            # A failure after the first step keeps the steps measured before it.
            results["memory"] = {**results.get("memory", {}), **outcome}
        if not args.bootstrap:
            results["broker"]["peak_rss_bytes"] = proc_status(broker.pid).get("VmHWM")

    results["finished_at"] = datetime.now(UTC).isoformat()
    results["wall_seconds"] = time.monotonic() - started
    text = report(results)
    results["report"] = text
    save(partial=False)
    # latest.json is every run's default; this copy stays with the run's logs.
    kept = log_dir / "results.json"
    kept.write_bytes(orjson.dumps({**results, "partial": False}, option=orjson.OPT_INDENT_2))
    print()
    print(text)
    print(f"\nfigures: {args.output} (and {kept})\nlogs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
