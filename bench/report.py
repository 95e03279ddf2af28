"""The benchmark's printed report: one table per shape with rates and ratios, the targets each
marked met or missed, then alert latency, memory, the machine and what else was running."""

from __future__ import annotations

import re
from typing import Any

from harness import mib, rate

TARGET_SINGLE1K_EVENTS_PER_S = 100_000
TARGET_VS_PEER = 1.5  # single-event shapes, over 1,000 and over 100,000 workspaces
TARGET_BATCH_EVENTS_PER_S = 150_000
TARGET_ALERT_P99_SECONDS = 1.0
TARGET_RSS_GROWTH = 1.15  # RSS after 5M distinct event ids ÷ RSS after 1M

PHASES = (
    ("raw_orjson", "raw aiokafka getmany + orjson"),
    ("raw_parse", "raw aiokafka + parse_usage_message"),
    ("bare_faust", "bare Faust agent (iterate only)"),
    ("quix", "quix-streams peer (RocksDB sum/key)"),
    ("meterwatch", "meterwatch worker end to end"),
    ("two_workers", "two meterwatch workers, combined"),
)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def _eps(phase: dict[str, Any] | None) -> float | None:
    return phase.get("events_per_s") if phase and "error" not in phase else None


def _mw(shape: dict[str, Any]) -> tuple[float | None, bool]:
    """The meterwatch rate of a shape, and whether the phase failed (then the rate it had
    reached when it timed out, if any): a failed phase misses its targets."""
    phase = shape.get("meterwatch") or {}
    if "error" in phase:
        return phase.get("partial_events_per_s"), True
    return phase.get("events_per_s"), False


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _error_line(error: str) -> str:
    """The first line of a failure and its last (the exception, when a log tail follows)."""
    lines = [line.strip() for line in error.strip().splitlines() if any(c.isalpha() for c in line)]
    if not lines:
        return "?"
    raised = [line for line in lines[1:] if re.match(r"^[\w.]*(Error|Exception|Exit)\b", line)]
    errors = [line for line in lines[1:] if "Error" in line or "error" in line]
    last = raised[0] if raised else (errors or lines[1:] or [""])[-1]
    return lines[0][:160] + (f" … {last[:200]}" if last else "")


def _fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x >= 0.1 else f"{x:.4f}"


def _exact(phase: dict[str, Any]) -> str:
    if "error" in phase:
        return "FAILED"
    check = phase.get("exactness") or (phase if "exact" in phase else None)
    if not check:
        return ""
    mark = "exact" if check["exact"] else f"WRONG {check['wrong']:,}"
    return f"{mark} ({check['how']})"


def targets(results: dict[str, Any]) -> list[tuple[str, float | None, bool | None]]:
    """(description with figure, measured, met) for every target."""
    shapes = {s["shape"]: s for s in results.get("shapes", [])}
    out: list[tuple[str, float | None, bool | None]] = []

    def add(name: str, value: float | None, ok: bool | None, fmt: str, failed: bool = False) -> None:
        figure = "-" if value is None else format(value, fmt)
        if failed:
            # A phase that failed or timed out misses its target whatever it had reached.
            figure += " (phase failed; rate until then)" if value is not None else " (phase failed)"
            ok = False
        out.append((f"{name}: {figure}", value, ok))

    single1k = shapes.get("single1k")
    if single1k:
        mw, failed = _mw(single1k)
        ok = None if mw is None else mw >= TARGET_SINGLE1K_EVENTS_PER_S
        add(f"single events, 1,000 workspaces ≥ {TARGET_SINGLE1K_EVENTS_PER_S:,} events/s", mw, ok, ",.0f", failed)
        vs = _ratio(mw, _eps(single1k.get("quix")))
        ok = None if vs is None else vs >= TARGET_VS_PEER
        add(f"single events, 1,000 workspaces ≥ {TARGET_VS_PEER} × quix peer", vs, ok, ".2f", failed)
    single100k = shapes.get("single100k")
    if single100k:
        mw, failed = _mw(single100k)
        vs = _ratio(mw, _eps(single100k.get("quix")))
        ok = None if vs is None else vs >= TARGET_VS_PEER
        add(f"single events, 100,000 workspaces ≥ {TARGET_VS_PEER} × quix peer", vs, ok, ".2f", failed)
    batch = shapes.get("batch")
    if batch:
        mw, failed = _mw(batch)
        ok = None if mw is None else mw >= TARGET_BATCH_EVENTS_PER_S
        per = batch.get("events_per_message", "?")
        add(f"batches of {per} ≥ {TARGET_BATCH_EVENTS_PER_S:,} events/s", mw, ok, ",.0f", failed)
    latency = results.get("latency")
    if latency is not None:
        p99 = None if "error" in latency else latency["published_delay_seconds"]["p99"]
        add(
            f"alert p99 ≤ {TARGET_ALERT_P99_SECONDS:.0f} s at half the peak (s)",
            p99,
            None if p99 is None else p99 <= TARGET_ALERT_P99_SECONDS,
            ".3f",
        )
    memory = results.get("memory")
    if memory is not None:
        ratio = memory.get("rss_ratio")
        add(
            f"RSS 5M ids ≤ {TARGET_RSS_GROWTH} × RSS 1M ids",
            ratio,
            None if ratio is None else ratio <= TARGET_RSS_GROWTH,
            ".3f",
        )
    return out


def shape_table(shape: dict[str, Any]) -> list[str]:
    if "produced" not in shape:
        return [f"{shape['label']}: FAILED before any phase: {_error_line(shape.get('error', '?'))}"]
    lines = [
        f"{shape['label']}: {shape['events']:,} events in {shape['messages']:,} messages "
        f"(produced beforehand in {shape['produced']['seconds']:.1f}s, not counted)"
    ]
    mw = _eps(shape.get("meterwatch"))
    header = f"  {'phase':<40}{'seconds':>9}{'events/s':>11}{'mw ÷ this':>11}  result"
    lines += [header, "  " + "-" * (len(header) + 20)]
    for key, name in PHASES:
        phase = shape.get(key)
        if phase is None:
            continue
        eps = _eps(phase)
        seconds = "-" if "error" in phase else f"{phase['seconds']:.2f}"
        ratio = "" if key in ("meterwatch", "two_workers") else _fmt_ratio(_ratio(mw, eps))
        if key == "two_workers":
            ratio = f"×{_fmt_ratio(_ratio(eps, mw))} of 1"
        lines.append(f"  {name:<40}{seconds:>9}{rate(eps):>11}{ratio:>11}  {_exact(phase)}")
        if "error" in phase:
            lines.append(f"    !! {_error_line(phase['error'])}")
            if phase.get("partial_events_per_s") is not None:
                lines.append(
                    f"    !! got as far as {phase['counted']:,} events in {phase['seconds_until_timeout']:.0f}s "
                    f"({rate(phase['partial_events_per_s'])} events/s until then; peak RSS {mib(phase.get('peak_rss_bytes'))})"
                )
    lines.append(
        f"  ratios: meterwatch ÷ quix peer {_fmt_ratio(_ratio(mw, _eps(shape.get('quix'))))}, "
        f"÷ raw (orjson) {_fmt_ratio(_ratio(mw, _eps(shape.get('raw_orjson'))))}, "
        f"÷ raw (parse) {_fmt_ratio(_ratio(mw, _eps(shape.get('raw_parse'))))}, "
        f"÷ bare Faust {_fmt_ratio(_ratio(mw, _eps(shape.get('bare_faust'))))}"
    )
    worker = shape.get("meterwatch") or {}
    if "error" not in worker and worker:
        lines.append(
            f"  worker: start-up to healthy {worker['startup_seconds']:.1f}s (not counted), {worker['processing_guarantee']}, "
            f"peak RSS {mib(worker['peak_rss_bytes'])}; clock stopped by meterwatch_events_counted_total; "
            f"counter 1 s later {worker.get('counter_after_1s')}; /usage checked in {worker['exactness']['seconds']}s"
        )
    if worker.get("counting_events_per_s") is not None:
        lines.append(
            f"  worker: first event counted {worker['first_count_after_seconds']:.1f}s after /health 200; "
            f"from then to the last: {rate(worker['counting_events_per_s'])} events/s (targets use the rate from /health 200)"
        )
    cpu = worker.get("cpu")
    if cpu and cpu.get("cpu_us_per_event") is not None:
        lines.append(
            f"  worker CPU while counting: {cpu['user_seconds']:.1f}s user + {cpu['system_seconds']:.1f}s system, "
            f"{cpu['cpu_us_per_event']:.1f} µs per event; {cpu['minor_faults']:,.0f} minor page faults "
            f"({cpu['minor_faults_per_event']:.2f} per event)"
        )
    lines.extend(batch_lines(worker.get("batches")))
    stats = worker.get("log")
    if stats:
        lines.append(
            f"  worker log: {stats['loop_stall_warnings']} event-loop stalls (longest {stats['max_loop_stall_seconds'] or 0:.2f}s), "
            f"{stats['producer_buffer_full_warnings']} 'producer buffer full', {stats['error_lines']} error lines"
        )
    two = shape.get("two_workers")
    if two and "error" not in two:
        lines.append(
            f"  two workers: counted per worker {two['per_worker_counted']}, {two['counted_before_clock']:,} before both were healthy (left out of the rate)"
            + (
                f"; from the first event counted ({two['first_count_after_seconds']:.1f}s after): {rate(two['counting_events_per_s'])} events/s"
                if two.get("counting_events_per_s") is not None
                else ""
            )
        )
    return lines


def batch_lines(batches: dict[str, dict[str, float]] | None) -> list[str]:
    return [
        f"  worker {stage} batches: {batch['batches']:,.0f}, mean {batch['mean_messages']:,.1f} messages "
        f"in {batch['mean_seconds'] * 1000:.1f} ms; {batch['busy_seconds']:.1f}s in all"
        for stage, batch in sorted((batches or {}).items())
    ]


def latency_lines(latency: dict[str, Any]) -> list[str]:
    if "error" in latency:
        return [f"alert latency: FAILED: {_error_line(latency['error'])}"]
    pub, rec = latency["published_delay_seconds"], latency["received_delay_seconds"]
    produced = latency["produced"]

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:,.0f} ms"

    return [
        f"alert latency at half the peak (after {latency.get('warm_up_events', 0):,} warm-up events were counted): "
        f"{latency['target_rate']:,.0f} events/s asked (peak {latency['peak_rate']:,.0f}), "
        f"{produced['achieved_per_s']:,.0f} achieved over {produced['seconds']:.1f}s, {latency['events']:,} events, "
        f"{latency['counted'] - latency.get('warm_up_events', 0):,} of them counted; {latency['alerted_workspaces']} workspaces with thresholds {latency['thresholds']}",
        f"  {latency['alerts']:,} alerts (expected {latency['expected_alerts']:,}); "
        f"triggered_at → alert record's Kafka timestamp: p50 {fmt(pub['p50'])}, p99 {fmt(pub['p99'])}, max {fmt(pub['max'])}; "
        f"→ received here: p50 {fmt(rec['p50'])}, p99 {fmt(rec['p99'])}, max {fmt(rec['max'])}",
        *(
            [
                f"  split at the inbox record carrying the cause event: event → inbox p50 {fmt(to['p50'])}, "
                f"p99 {fmt(to['p99'])}; inbox → alert p50 {fmt(on['p50'])}, p99 {fmt(on['p99'])}"
            ]
            if (to := latency.get("to_inbox_seconds")) and (on := latency.get("inbox_to_alert_seconds"))
            else []
        ),
        *(
            [
                f"  cores used meanwhile ({cpu['machine busy']:.2f} of the machine's): "
                + ", ".join(f"{name} {cores:.2f}" for name, cores in cpu.items() if name != "machine busy")
            ]
            if (cpu := latency.get("cpu_cores"))
            else []
        ),
        *batch_lines(latency.get("batches")),
    ]


def memory_lines(memory: dict[str, Any]) -> list[str]:
    lines = ["memory (dedupe store, batch messages):"]
    if "error" in memory:
        lines.append(f"  FAILED: {_error_line(memory['error'])}")
    for step in memory.get("steps", []):
        disk = step["disk_bytes_by_table"]
        tables = ", ".join(f"{name} {mib(size)}" for name, size in sorted(disk.items(), key=lambda kv: -kv[1])[:4])
        done = "" if step["complete"] else f" (INCOMPLETE: {step['counted']:,} counted)"
        lines.append(
            f"  after {step['distinct_ids_sent']:,} distinct ids{done}: RSS {mib(step['rss_bytes'])} "
            f"(anon {mib(step['rss_anon_bytes'])}, file {mib(step['rss_file_bytes'])}; peak {mib(step['peak_rss_bytes'])}; "
            f"process_resident_memory_bytes {mib(step['process_resident_memory_bytes'])}); "
            f"dedupe entries {rate(step['dedupe_store_entries'])}; on disk {mib(sum(disk.values()))} ({tables}); "
            f"counted at {rate(step['events_per_s'])} events/s"
        )
        parts = step.get("memory_parts_bytes")
        if parts:
            lines.append("    of which: " + ", ".join(f"{part} {mib(size)}" for part, size in parts.items()))
    if memory.get("skipped_5m"):
        lines.append("  the 5,000,000-id step was skipped (--quick)")
    if "rss_ratio" in memory:
        first, second = memory["steps"][:2]
        lines.append(
            f"  RSS after {second['counted']:,} ids ÷ RSS after {first['counted']:,} ids = {memory['rss_ratio']:.3f}"
        )
    growth = memory.get("growth_bytes_per_id")
    if growth:
        lines.append(
            "  growth per extra id: " + ", ".join(f"{k.replace('_bytes', '')} {v:,.1f} B" for k, v in growth.items())
        )
    by_part = memory.get("growth_bytes_by_part")
    if by_part:
        lines.append(
            "  growth by part: " + ", ".join(f"{part} {size / 2**20:+,.1f} MiB" for part, size in by_part.items())
        )
    if "breakdown_note" in memory:
        lines.append(f"  note: {memory['breakdown_note']}")
    trajectory = memory.get("rss_trajectory") or []
    if trajectory:
        picks = trajectory[:: max(1, len(trajectory) // 8)]
        lines.append(
            "  RSS while counting (s after healthy, ids counted, RSS [malloc in use]): "
            + "; ".join(f"{t:.0f}s {n:,} {mib(r)}" + (f" [{mib(rest[0])}]" if rest else "") for t, n, r, *rest in picks)
        )
    return lines


def report(results: dict[str, Any]) -> str:
    m, v, repo = results["machine"], results["versions"], results["repo"]
    dirty = repo["uncommitted_changes_outside_bench"]
    lines = [
        f"machine: {m['nproc']} CPUs ({m['usable_cpus']} usable), {m['cpu_model']}, {mib(m['mem_total_bytes'])} RAM, Linux {m['kernel']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"broker: {results['broker']['kind']} at {results['broker']['bootstrap']}",
        f"meterwatch: commit {repo['commit']}"
        + (f" + uncommitted changes in {len(dirty)} file(s): {', '.join(x[3:] for x in dirty)}" if dirty else "")
        + f"; workers import {repo.get('measured_code')} ({repo.get('code')})",
        "configuration:",
        *(f"  {key}: {value}" for key, value in results["config"].items()),
        "",
    ]
    if results.get("shapes"):
        lines.append(
            "mw ÷ this: the meterwatch worker's rate ÷ that phase's; for two workers, their combined rate as a multiple of one worker's"
        )
        lines.append("")
    for shape in results.get("shapes", []):
        lines += shape_table(shape) + [""]
    if results.get("latency") is not None:
        lines += latency_lines(results["latency"]) + [""]
    if results.get("memory") is not None:
        lines += memory_lines(results["memory"]) + [""]
    foreign = []
    for shape in results.get("shapes", []):
        for key, _name in PHASES:
            load = (shape.get(key) or {}).get("foreign_load")
            if load and load["cores"] >= 0.05:
                names = ", ".join(k.split(" ", 2)[1][-30:] for k, _v in load["top_still_running"][:3])
                foreign.append(
                    f"{key}/{shape['shape']}: {load['cores']:.2f} cores" + (f" (e.g. {names})" if names else "")
                )
    if foreign:
        lines.append("!! other processes used CPU during these phases (figures may be skewed): " + "; ".join(foreign))
    else:
        lines.append("no other process used noticeable CPU during the throughput phases (< 0.05 cores)")
    lines += ["", "targets:"]
    for text, _value, ok in targets(results):
        lines.append(f"  {text:<70} {verdict(ok)}")
    if "wall_seconds" in results:
        lines.append(f"\nwall time of the run: {results['wall_seconds'] / 60:.1f} min")
    return "\n".join(lines)
