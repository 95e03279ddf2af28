"""Real ``meterwatch worker`` processes for integration tests, and what tests do with them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from meterwatch.tokens import mint
from tests.support.kafka_security import as_worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path
    web_port: int
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> WorkerProcess:
        self.starts += 1
        log = open(self.log_path, "ab")
        log.write(f"\n===== start #{self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "meterwatch", "worker"],
            env=as_worker(self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            status, _ = http_get(f"{self.base_url}/health")
            if status == 200:
                return
            time.sleep(0.3)
        raise AssertionError(f"worker not healthy after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no commit."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# The workers of the tests check tokens signed with this (METERWATCH_AUTH_SECRET).
TEST_AUTH_SECRET = "meterwatch-tests-only-secret-0123456789"
SERVICE = "service"  # http_get's default: a service token, which reads every route


def token_for(
    *workspaces: str,
    metrics: Iterable[str] | None = None,
    billing: bool = False,
    ttl: timedelta = timedelta(hours=1),
    secret: str = TEST_AUTH_SECRET,
    subject: str = "meterwatch",
) -> str:
    """A bearer token for ``workspaces`` (none: a service token), as ``meterwatch token`` mints."""
    return mint(secret.encode(), datetime.now(UTC), ttl, workspaces=workspaces, metrics=metrics, billing=billing,
                service=not workspaces, subject=subject)  # fmt: skip


def http_get(
    url: str, timeout: float = 5.0, token: str | None = SERVICE, headers: dict[str, str] | None = None
) -> tuple[int | None, Any]:
    """GET ``url``: its status and body (JSON when it is). ``token``: sent as a bearer token
    (default a service token; None sends none)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token_for() if token == SERVICE else token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=sent), timeout=timeout) as response:
            body = response.read()
            return response.status, _maybe_json(body)
    except urllib.error.HTTPError as error:
        return error.code, _maybe_json(error.read())
    except (urllib.error.URLError, OSError):
        return None, None


def http_put(url: str, body: Any, token: str | None, timeout: float = 15.0) -> tuple[int | None, Any]:
    """PUT ``body`` (JSON) to ``url`` with ``token`` as a bearer token (None sends none)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=orjson.dumps(body), headers=headers, method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, _maybe_json(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _maybe_json(error.read())


def _maybe_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace")


def usage_shown(worker: WorkerProcess, workspaces: Iterable[str], metric: str = "messages_sent") -> dict[str, int]:
    """``GET /usage`` of each workspace that has usage of ``metric``: workspace -> usage."""
    shown = {}
    for workspace in workspaces:
        status, body = http_get(f"{worker.base_url}/usage/{workspace}")
        if status == 200 and metric in body["metrics"]:
            shown[workspace] = body["metrics"][metric]["usage"]
    return shown


async def eventually(check, timeout: float = 30.0, interval: float = 0.2):  # type: ignore[no-untyped-def]
    """Poll ``check`` (sync or async, returning a truthy value when satisfied) until it is."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def scrape(worker: WorkerProcess) -> tuple[str, dict[tuple[str, tuple], float]]:
    """``GET /metrics``: its text, and every sample by (name, sorted labels)."""
    request = urllib.request.Request(f"{worker.base_url}/metrics", headers={"Authorization": f"Bearer {token_for()}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def metric_samples(worker: WorkerProcess, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of one metric on a worker's ``/metrics``: (labels, value) each."""
    status, text = http_get(f"{worker.base_url}/metrics")
    if status != 200:
        return []
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
