"""A real ``python -m meterwatch worker`` process driven from outside, through its documented
interface only: ``METERWATCH_*`` variables, ``/health``, ``/usage/{id}``, ``/metrics``."""

from __future__ import annotations

import asyncio
import http.client
import random
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from harness import PYTHON, PhaseFailed, dir_size, free_port, proc_cpu, proc_status, spawn, stop_process, tail
from harness import child_env as _child_env
from producing import METRIC

COUNTED = "meterwatch_events_counted_total"


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text → {metric name: sum over its label sets} (comments skipped)."""
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums


def batch_stats(text: str) -> dict[str, dict[str, float]]:
    """Per stage: batches handled, their mean size in messages and mean duration, and the time
    spent in them (``meterwatch_batch_*`` histograms' sums and counts)."""
    found: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        for name in ("meterwatch_batch_messages", "meterwatch_batch_duration_seconds"):
            for part in ("_sum", "_count"):
                head = f"{name}{part}{{"
                if line.startswith(head) and 'stage="' in line:
                    stage = line.split('stage="', 1)[1].split('"', 1)[0]
                    found[(f"{name}{part}", stage)] = float(line.rpartition(" ")[2])
    stats: dict[str, dict[str, float]] = {}
    for (name, stage), value in found.items():
        if name != "meterwatch_batch_messages_count" or not value:
            continue
        stats[stage] = {
            "batches": value,
            "mean_messages": found.get(("meterwatch_batch_messages_sum", stage), 0.0) / value,
            "mean_seconds": found.get(("meterwatch_batch_duration_seconds_sum", stage), 0.0) / value,
            "busy_seconds": found.get(("meterwatch_batch_duration_seconds_sum", stage), 0.0),
        }
    return stats


# Settings every measured worker is given besides its own (bench/run.py --ingest-in-worker).
worker_settings: dict[str, str] = {}

# Workers check a bearer token on every route but /health; the bench reads with a service token
# it mints through the command line, as an operator would.
AUTH_SECRET = secrets.token_urlsafe(32)
_service_token: str | None = None


def service_authorization() -> dict[str, str]:
    global _service_token
    if _service_token is None:
        minted = subprocess.run(
            [PYTHON, "-m", "meterwatch", "token", "--service", "--ttl", "1d"],
            env=_child_env({"METERWATCH_AUTH_SECRET": AUTH_SECRET}),
            capture_output=True,
            text=True,
            check=True,
        )
        _service_token = minted.stdout.strip()
    return {"Authorization": f"Bearer {_service_token}"}


@dataclass
class MeterwatchWorker:
    bootstrap: str
    prefix: str
    app_id: str
    partitions: int
    data_dir: Path
    log_path: Path
    web_port: int = field(default_factory=free_port)
    process: Any = None
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
            "METERWATCH_AUTH_SECRET": AUTH_SECRET,
            **worker_settings,
        }

    def start(self) -> None:
        # Run outside the repository: ``-m`` puts the working directory first on sys.path, and the
        # installed meterwatch (or one on PYTHONPATH) is what is measured.
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn(
            [PYTHON, "-m", "meterwatch", "worker"],
            self.log_path,
            env=_child_env(self.env_settings),
            cwd=self.data_dir.parent,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise PhaseFailed(f"worker exited with {self.process.returncode}:\n{tail(self.log_path)}")

    def get(self, path: str, timeout: float = 10.0) -> tuple[int | None, Any]:
        for _attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.web_port, timeout=timeout)
            try:
                self.conn.request("GET", path, headers=service_authorization())
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

    def healthy(self) -> tuple[bool, str]:
        status, body = self.get("/health")
        guarantee = body.get("processing_guarantee", "?") if isinstance(body, dict) else "?"
        return status == 200, guarantee

    def wait_healthy(self, timeout: float = 120.0) -> tuple[float, str]:
        """Poll ``/health`` every 50 ms; returns (perf_counter at the first 200, guarantee)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            ok, guarantee = self.healthy()
            if ok:
                return time.perf_counter(), guarantee
            time.sleep(0.05)
        raise PhaseFailed(f"worker not healthy after {timeout:.0f}s:\n{tail(self.log_path)}")

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics")
        if status != 200:
            return {}
        return parse_metrics(body.decode(errors="replace") if isinstance(body, bytes) else str(body))

    def batches(self) -> dict[str, dict[str, float]]:
        status, body = self.get("/metrics")
        if status != 200:
            return {}
        return batch_stats(body.decode(errors="replace") if isinstance(body, bytes) else str(body))

    def counted(self) -> int | None:
        found = self.metrics()
        return int(found[COUNTED]) if COUNTED in found else None

    def cpu(self) -> dict[str, float]:
        return proc_cpu(self.pid)

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    def disk(self) -> dict[str, int]:
        return dir_size(self.data_dir)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        stop_process(self.process)


def wait_counter(
    workers: list[MeterwatchWorker], total: int, timeout: float, poll: float = 0.05, on_progress: Any = None
) -> dict[str, Any]:
    """Until the workers' ``meterwatch_events_counted_total`` (summed) reaches ``total``.
    Returns the perf_counter of the poll that saw it, and the count (or how far it got)."""
    started = time.monotonic()
    deadline = started + timeout
    last_progress = started
    seen = 0
    first: tuple[float, int] | None = None  # (perf_counter, count) at the first poll that saw counting
    baseline: int | None = None
    while True:
        for worker in workers:
            worker.check_alive()
        values = [w.counted() for w in workers]
        seen = sum(v or 0 for v in values)
        if baseline is None:
            baseline = seen
        elif first is None and seen > baseline:
            first = (time.perf_counter(), seen)
        if seen >= total:
            return {"complete": True, "counted": seen, "at": time.perf_counter(), "first_counting": first}
        now = time.monotonic()
        if now > deadline:
            # prometheus_client shows a labelled counter only once a label has been counted.
            missing = (
                " (meterwatch_events_counted_total not on /metrics: nothing counted)"
                if all(v is None for v in values)
                else ""
            )
            return {
                "complete": False,
                "counted": seen,
                "at": time.perf_counter(),
                "why": f"{seen:,} of {total:,} counted after {timeout:.0f}s{missing}",
            }
        if on_progress is not None and now - last_progress >= 10:
            last_progress = now
            on_progress(now - started, seen)
        time.sleep(poll)


async def _usage_many(
    port: int, workspaces: list[str], deadline: float, concurrency: int = 32
) -> dict[str, int | None]:
    import aiohttp

    found: dict[str, int | None] = {}
    queue = iter(workspaces)

    async def one(session: aiohttp.ClientSession) -> None:
        for ws in queue:
            if time.monotonic() > deadline:
                return
            value: int | None = None
            for _attempt in range(3):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/usage/{ws}") as response:
                        if response.status == 404:
                            value = 0
                        elif response.status == 200:
                            body = orjson.loads(await response.read())
                            metric = body.get("metrics", {}).get(METRIC)
                            value = metric["usage"] if metric else 0
                        break
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.1)
            found[ws] = value

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, headers=service_authorization()) as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))
    return found


def check_exact(
    worker: MeterwatchWorker, expected: dict[str, int], budget: float, sample: int = 2_000
) -> dict[str, Any]:
    """Compare ``/usage`` with what was sent, over every workspace if that fits in ``budget``
    seconds, else over a random sample (at least ``sample`` workspaces, checked first), plus
    the worker's total from ``/metrics``."""
    order = list(expected)
    random.Random(0).shuffle(order)
    started = time.monotonic()
    found = asyncio.run(_usage_many(worker.web_port, order[:sample], started + max(budget, 300.0)))
    if len(found) == len(order[:sample]) and len(order) > sample:
        found.update(asyncio.run(_usage_many(worker.web_port, order[sample:], started + budget)))
    wrong = {ws: (found[ws], expected[ws]) for ws in found if found[ws] != expected[ws]}
    return {
        "checked": len(found),
        "of": len(order),
        "how": "every workspace"
        if len(found) == len(order)
        else f"random sample of {len(found):,} of {len(order):,} workspaces",
        "wrong": len(wrong),
        "unanswered": sum(1 for v in found.values() if v is None),
        "wrong_examples": dict(list(wrong.items())[:5]),
        "seconds": round(time.monotonic() - started, 1),
        "exact": not wrong and len(found) > 0,
    }
