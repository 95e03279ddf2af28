"""The throughput phases of the benchmark, each over one pre-produced topic per shape: raw
ceilings, bare Faust, the quix-streams peer, one meterwatch worker, two meterwatch workers."""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from harness import (
    BENCH,
    PYTHON,
    RESULTS,
    ForeignLoad,
    PhaseFailed,
    free_port,
    log,
    log_stats,
    mib,
    proc_status,
    rate,
    spawn,
    stop_process,
    tail,
)
from producing import Producer, Shape, in_chunks
from worker import MeterwatchWorker, check_exact, wait_counter


def guarded(name: str, phase: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one phase; a failure or time-out becomes ``{"error": …}`` and the run goes on. Each
    phase stops its own children in ``finally``, so nothing is left running."""
    load = ForeignLoad()
    try:
        result = phase()
    except Exception as error:  # noqa: BLE001 - any failure of a phase is a result to report
        detail = str(error) if isinstance(error, PhaseFailed) else traceback.format_exc()
        log(f"{name}: FAILED: {detail.splitlines()[0] if detail else type(error).__name__}")
        # The first line says what failed; the end of a log tail or traceback says why.
        kept = detail if len(detail) <= 3000 else detail[:500] + "\n…\n" + detail[-2500:]
        return {"error": kept, **getattr(error, "details", {}), "foreign_load": load.finish()}
    result["foreign_load"] = load.finish()
    return result


def wait_for_file(
    proc: subprocess.Popen[bytes], path: Path, timeout: float, log_path: Path, what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None and not path.exists():
            raise PhaseFailed(f"{what} exited with {proc.returncode}:\n{tail(log_path)}")
        if time.monotonic() > deadline:
            raise PhaseFailed(f"{what} did not finish in {timeout:.0f}s:\n{tail(log_path)}")
        time.sleep(0.1)
    return orjson.loads(path.read_bytes())


def run_raw(
    bootstrap: str, topic: str, partitions: int, messages: int, decode: str, log_path: Path, timeout: float
) -> dict[str, Any]:
    argv = [PYTHON, str(BENCH / "raw_ceiling.py"), "--bootstrap", bootstrap, "--topic", topic, "--partitions", str(partitions),
            "--expected-messages", str(messages), "--decode", decode, "--timeout", str(timeout)]  # fmt: skip
    proc = spawn(argv, log_path, stdout=subprocess.PIPE)
    try:
        out, _ = proc.communicate(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        raise PhaseFailed(f"raw ceiling ({decode}) did not finish in {timeout:.0f}s:\n{tail(log_path)}") from None
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise PhaseFailed(f"raw ceiling ({decode}) failed ({proc.returncode}):\n{tail(log_path)}")
    return orjson.loads(out.decode().strip().splitlines()[-1])


def run_bare_faust(
    bootstrap: str, topic: str, shape: Shape, partitions: int, work: Path, log_dir: Path, timeout: float
) -> dict[str, Any]:
    result_path = work / f"bare-{shape.name}.json"
    log_path = log_dir / f"bare-faust-{shape.name}.log"
    argv = [PYTHON, str(BENCH / "bare_faust.py"), "--bootstrap", bootstrap, "--topic", topic, "--app-id", f"bare-{work.name}-{shape.name}",
            "--partitions", str(partitions), "--expected-messages", str(shape.messages), "--events-per-message", str(shape.events_per_message),
            "--web-port", str(free_port()), "--datadir", str(work / f"bare-{shape.name}-data"), "--result", str(result_path)]  # fmt: skip
    proc = spawn(argv, log_path)
    try:
        result = wait_for_file(proc, result_path, timeout, log_path, "bare Faust")
        result["peak_rss_bytes"] = proc_status(proc.pid).get("VmHWM")
        return result
    finally:
        stop_process(proc)


def run_quix(bootstrap: str, topic: str, shape: Shape, work: Path, log_dir: Path, timeout: float) -> dict[str, Any]:
    result_path = work / f"quix-{shape.name}.json"
    log_path = log_dir / f"quix-peer-{shape.name}.log"
    argv = [PYTHON, str(BENCH / "quix_peer.py"), "--bootstrap", bootstrap, "--topic", topic, "--group", f"quix-{work.name}-{shape.name}",
            "--state-dir", str(work / f"quix-{shape.name}-state"), "--expected-messages", str(shape.messages), "--result", str(result_path)]  # fmt: skip
    proc = spawn(argv, log_path)
    peak = None
    try:
        deadline = time.monotonic() + timeout
        while not result_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            peak = proc_status(proc.pid).get("VmHWM") or peak
            time.sleep(0.2)
        result = wait_for_file(proc, result_path, max(1.0, deadline - time.monotonic()), log_path, "quix peer")
    finally:
        stop_process(proc)
    sums = result.pop("sums")
    expected = shape.expected()
    wrong = {k: (sums.get(k), v) for k, v in expected.items() if sums.get(k) != v}
    wrong.update({k: (v, None) for k, v in sums.items() if k not in expected})
    result.update(
        keys=len(sums),
        exact=not wrong,
        how="every workspace (final per-key sums written by the peer)",
        wrong=len(wrong),
        wrong_examples=dict(list(wrong.items())[:5]),
        peak_rss_bytes=peak,
    )
    return result


def _meterwatch_result(total: int, clock: float, counted: dict[str, Any], at_start: int) -> dict[str, Any]:
    seconds = counted["at"] - clock
    result = {
        "events": total,
        "seconds": seconds,
        # Events counted before the clock started (the workers' counters then) are left out.
        "events_per_s": (total - at_start) / seconds if seconds > 0 else None,
        "counted_before_clock": at_start,
    }
    first = counted.get("first_counting")
    if first is not None:
        # A second clock from the first poll that saw the counter move, so how long the worker
        # took to start counting after it said it was healthy is apart from how fast it counts.
        first_at, first_count = first
        result["first_count_after_seconds"] = first_at - clock
        steady = counted["at"] - first_at
        result["counting_events_per_s"] = (total - first_count) / steady if steady > 0 else None
    return result


def run_meterwatch(
    args: argparse.Namespace, worker: MeterwatchWorker, shape: Shape, spy_path: Path | None, log_dir: Path
) -> dict[str, Any]:
    worker.start()
    spy = None
    try:
        launched = time.perf_counter()
        clock, guarantee = worker.wait_healthy(timeout=args.startup_timeout)
        at_start = worker.counted() or 0
        cpu_at_start = worker.cpu()
        if spy_path is not None:
            from profiling import start_py_spy

            spy = start_py_spy(worker.pid, spy_path, log_dir)
        counted = wait_counter([worker], shape.events, timeout=args.phase_timeout)
        if spy is not None:
            from profiling import stop_py_spy

            stop_py_spy(spy)
            spy = None
        memory = worker.memory()
        if not counted["complete"]:
            seconds = counted["at"] - clock
            raise PhaseFailed(
                f"meterwatch: {counted['why']}:\n{tail(worker.log_path)}",
                counted=counted["counted"],
                seconds_until_timeout=seconds,
                partial_events_per_s=(counted["counted"] - at_start) / seconds if seconds > 0 else None,
                peak_rss_bytes=memory.get("VmHWM"),
            )
        result = _meterwatch_result(shape.events, clock, counted, at_start)
        result["batches"] = worker.batches()
        cpu = worker.cpu()
        if cpu and cpu_at_start:
            used = {name: cpu[name] - cpu_at_start.get(name, 0) for name in cpu}
            events = shape.events - at_start
            result["cpu"] = {
                **used,
                "cpu_us_per_event": (used["user_seconds"] + used["system_seconds"]) / events * 1e6 if events else None,
                "minor_faults_per_event": used["minor_faults"] / events if events else None,
            }
        # Nothing more may arrive once the total is reached: a late second count would show here.
        time.sleep(1.0)
        result["counter_after_1s"] = worker.counted()
        result["exactness"] = check_exact(worker, shape.expected(), budget=args.check_budget)
        result.update(
            startup_seconds=clock - launched,
            processing_guarantee=guarantee,
            peak_rss_bytes=memory.get("VmHWM"),
            rss_bytes=memory.get("VmRSS"),
            env=worker.env_settings,
        )
        return result
    finally:
        if spy is not None:
            from profiling import stop_py_spy

            stop_py_spy(spy)
        worker.stop()
        log_path = worker.log_path
        if log_path.exists():
            stats = log_stats(log_path)
            log(
                f"{shape.name}: worker log: {stats['loop_stall_warnings']} loop stalls, {stats['error_lines']} error lines"
            )


def run_two_workers(args: argparse.Namespace, workers: list[MeterwatchWorker], shape: Shape) -> dict[str, Any]:
    """Two processes, one group: the clock starts at the first poll where both answer
    ``/health`` 200 and stops when their counters sum to every event."""
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            for worker in workers:
                worker.check_alive()
            states = [w.healthy() for w in workers]
            if all(ok for ok, _ in states):
                clock = time.perf_counter()
                break
            if time.monotonic() > deadline:
                raise PhaseFailed(
                    f"two workers not both healthy after {args.startup_timeout:.0f}s:\n{tail(workers[1].log_path)}"
                )
            time.sleep(0.05)
        at_start = sum(w.counted() or 0 for w in workers)
        counted = wait_counter(workers, shape.events, timeout=args.phase_timeout)
        if not counted["complete"]:
            seconds = counted["at"] - clock
            raise PhaseFailed(
                f"two workers: {counted['why']}",
                counted=counted["counted"],
                seconds_until_timeout=seconds,
                partial_events_per_s=(counted["counted"] - at_start) / seconds if seconds > 0 else None,
            )
        result = _meterwatch_result(shape.events, clock, counted, at_start)
        time.sleep(1.0)
        result["per_worker_counted"] = [w.counted() for w in workers]
        result["counter_after_1s"] = sum(v or 0 for v in result["per_worker_counted"])
        result["exactness"] = check_exact(workers[0], shape.expected(), budget=args.check_budget)
        result["peak_rss_bytes"] = [w.memory().get("VmHWM") for w in workers]
        return result
    finally:
        for worker in workers:
            worker.stop()


def run_shape(
    args: argparse.Namespace, shape: Shape, bootstrap: str, tag: str, work: Path, log_dir: Path
) -> dict[str, Any]:
    partitions = args.partitions
    prefix = f"bench{tag}{shape.name}."
    topic = f"{prefix}usage.events"
    rng = random.Random(f"{tag}-{shape.name}")
    producer = Producer(bootstrap, partitions)

    async def produce() -> dict[str, Any]:
        await producer.create_topic(topic)
        return await producer.produce(topic, in_chunks(shape, rng, 0, shape.messages))

    log(
        f"{shape.name}: producing {shape.events:,} events ({shape.messages:,} messages over {shape.workspaces:,} workspaces) to {topic} ..."
    )
    produced = asyncio.run(produce())
    log(f"{shape.name}: produced {mib(produced['bytes'])} in {produced['seconds']:.1f}s (not counted)")
    out: dict[str, Any] = {
        "shape": shape.name,
        "label": shape.label,
        "events": shape.events,
        "messages": shape.messages,
        "workspaces": shape.workspaces,
        "events_per_message": shape.events_per_message,
        "produced": produced,
    }
    timeout = args.phase_timeout
    for decode in ("orjson", "parse") if not args.worker_only else ():
        name = f"raw_{decode}"
        log(f"{shape.name}: raw aiokafka + {decode} ...")
        out[name] = guarded(
            name,
            lambda d=decode: run_raw(
                bootstrap, topic, partitions, shape.messages, d, log_dir / f"raw-{d}-{shape.name}.log", timeout
            ),
        )
        log(f"{shape.name}: raw {decode}: {rate(out[name].get('events_per_s'))} events/s")
    if not args.worker_only:
        log(f"{shape.name}: bare Faust agent ...")
        out["bare_faust"] = guarded(
            "bare Faust", lambda: run_bare_faust(bootstrap, topic, shape, partitions, work, log_dir, timeout)
        )
        log(f"{shape.name}: bare Faust: {rate(out['bare_faust'].get('events_per_s'))} events/s")
        log(f"{shape.name}: quix-streams peer ...")
        out["quix"] = guarded("quix peer", lambda: run_quix(bootstrap, topic, shape, work, log_dir, timeout))
        log(
            f"{shape.name}: quix peer: {rate(out['quix'].get('events_per_s'))} events/s, exact={out['quix'].get('exact')}"
        )

    spy_path = RESULTS / f"profile-{shape.name}.raw" if args.profile else None
    worker = MeterwatchWorker(
        bootstrap,
        prefix,
        f"mw{tag}{shape.name}",
        partitions,
        work / f"mw-{shape.name}-data",
        log_dir / f"worker-{shape.name}.log",
    )
    log(f"{shape.name}: meterwatch worker end to end{' (profiled)' if spy_path else ''} ...")
    out["meterwatch"] = mw = guarded("meterwatch", lambda: run_meterwatch(args, worker, shape, spy_path, log_dir))
    mw["log"] = log_stats(worker.log_path)
    if spy_path is not None and spy_path.exists():
        from profile_summary import render, summarise

        mw["profile"] = str(spy_path)
        mw["profile_summary"] = summary = summarise(spy_path)
        (RESULTS / f"profile-{shape.name}.txt").write_text(render(summary) + "\n")
    log(
        f"{shape.name}: meterwatch: {rate(mw.get('events_per_s'))} events/s, exact={mw.get('exactness', {}).get('exact')}"
    )

    if shape.name == "single1k" and not args.skip_two_workers:
        app_id = f"mw{tag}two"
        workers = [
            MeterwatchWorker(
                bootstrap, prefix, app_id, partitions, work / f"mw-two-{i}-data", log_dir / f"worker-two-{i}.log"
            )
            for i in (1, 2)
        ]
        log(f"{shape.name}: two meterwatch workers ...")
        out["two_workers"] = two = guarded("two workers", lambda: run_two_workers(args, workers, shape))
        two["log"] = [log_stats(w.log_path) for w in workers]
        log(
            f"{shape.name}: two workers: {rate(two.get('events_per_s'))} events/s, exact={two.get('exactness', {}).get('exact')}"
        )
    return out
