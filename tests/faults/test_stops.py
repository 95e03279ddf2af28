"""Stopping: ``meterwatch dev`` takes what it started with it, and a worker stops in bounded time.

- ``meterwatch dev`` stopped by SIGTERM (a process manager, ``timeout``, a container runtime) or
  SIGINT at any phase leaves no worker and no broker behind within 10 s; SIGKILLed, its worker
  and broker exit by themselves.
- ``meterwatch worker`` told to stop exits within ``METERWATCH_SHUTDOWN_TIMEOUT``, whatever the
  broker does, and says so in one line when it gives up; with the broker up it stops in good
  order and exits 0, well within the timeout.

Every process here is real, and so is every broker: the embedded one (Tansu), which these tests
start themselves so that they can kill it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meterwatch.brokers.embedded import EmbeddedBroker
from tests.support.processes import Proc, children_of, read_proc, tagged, wait_until_gone
from tests.support.worker import TEST_AUTH_SECRET, WorkerProcess, free_port, http_get

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes through Linux's /proc"),
]

# Every process a test starts inherits this variable, so it is found even once re-parented.
TAG = "STOPS_TEST_TAG"
DEV_STOP_SECONDS = 10.0
GIVE_UP_LINE = "shutdown: still stopping after"


def clean_environment(tmp_path: Path, tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")}
    # A temporary directory of the test's own: `meterwatch dev` keeps its worker's log there.
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**env, TAG: tag, "TMPDIR": str(tmp)}


@dataclass
class Dev:
    process: subprocess.Popen[bytes]
    output_path: Path
    web_port: int
    tag: str
    scratch_root: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, (
                f"dev exited with {self.process.returncode} before {what}:\n{self.output()}"
            )
            assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n{self.output()}"
            time.sleep(0.02)

    def children(self) -> list[Proc]:
        return children_of(self.process.pid)

    def worker_log(self) -> str:
        logs = list(self.scratch_root.glob("meterwatch-dev-*/worker.log"))
        return logs[0].read_text(errors="replace") if logs else "(the worker log is gone with dev's scratch directory)"


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    tag = uuid.uuid4().hex
    env = clean_environment(tmp_path, tag)
    web_port = free_port()
    env.update(METERWATCH_WEB_PORT=str(web_port), METERWATCH_DATA_DIR=str(tmp_path / "data"))
    output_path = tmp_path / "dev.out"
    with open(output_path, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "meterwatch", "dev", "--events-per-second", "20"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    started = Dev(process, output_path, web_port, tag, tmp_path / "tmp")
    try:
        yield started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for leftover in tagged(TAG, tag):
            leftover.kill()
        print(f"\n--- dev output tail ---\n{''.join(started.output().splitlines(keepends=True)[-15:])}")


def is_worker(proc: Proc) -> bool:
    return "meterwatch worker" in proc.command


def is_broker(proc: Proc) -> bool:
    return "tansu" in proc.command


def program(proc: Proc) -> str:
    """The program's name; a child forked a moment ago may not have run it yet (no command line)."""
    argv = proc.command.split()
    return argv[0].rsplit("/", 1)[-1] if argv else f"pid {proc.pid} (not started yet)"


def healthy(port: int) -> bool:
    return http_get(f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200


def assert_dev_stops_everything(dev: Dev, signum: signal.Signals, figures: Callable[[str], None], phase: str) -> None:
    before = dev.children()
    sent_at = time.monotonic()
    os.kill(dev.process.pid, signum)
    deadline = sent_at + DEV_STOP_SECONDS
    try:
        code = dev.process.wait(timeout=DEV_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        code = None
    dev_seconds = time.monotonic() - sent_at
    # Tagged: any process dev started, including one it started after we looked, or one that
    # outlived it and now belongs to init.
    left = wait_until_gone([*before, *tagged(TAG, dev.tag)], deadline)
    all_gone = time.monotonic() - sent_at
    figures(
        f"dev {signum.name} while {phase}: children then {[program(p) for p in before]}; "
        f"dev exited with {code} after {dev_seconds:.1f}s; everything gone after {all_gone:.1f}s"
    )
    assert code is not None, f"dev still running {DEV_STOP_SECONDS}s after {signum.name}:\n{dev.output()}"
    assert not left, (
        f"still running {DEV_STOP_SECONDS}s after {signum.name} to dev: "
        f"{[(p.pid, p.command) for p in left]}\n{dev.output()}\n--- worker log ---\n{dev.worker_log()[-3000:]}"
    )
    assert code == 0, f"dev exited with {code}:\n{dev.output()}"


def test_dev_stopped_while_starting_leaves_nothing_behind(dev: Dev, fault_figures: Callable[[str], None]) -> None:
    # Its first child is the broker, still starting or just up; the worker may not exist yet.
    dev.wait_for(lambda: bool(dev.children()), "child process", timeout=30)
    assert_dev_stops_everything(dev, signal.SIGTERM, fault_figures, "starting")


def test_dev_stopped_while_waiting_for_health_leaves_nothing_behind(
    dev: Dev, fault_figures: Callable[[str], None]
) -> None:
    dev.wait_for(lambda: any(is_worker(p) for p in dev.children()), "worker process", timeout=30)
    # The worker needs seconds to start (topics, group, tables): it cannot be healthy yet.
    time.sleep(1.0)
    assert not healthy(dev.web_port), "the worker became healthy too soon for this phase"
    assert "meterwatch is consuming" not in dev.output()
    assert_dev_stops_everything(dev, signal.SIGTERM, fault_figures, "waiting for health")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dev_stopped_while_running_leaves_nothing_behind(
    dev: Dev, signum: signal.Signals, fault_figures: Callable[[str], None]
) -> None:
    dev.wait_for(lambda: "meterwatch is consuming" in dev.output(), "healthy worker", timeout=90)
    dev.wait_for(lambda: "COMMAND" in dev.output(), "demo traffic counted", timeout=30)
    children = dev.children()
    assert any(is_worker(p) for p in children) and any(is_broker(p) for p in children), children
    assert_dev_stops_everything(dev, signum, fault_figures, "running")
    assert "stopped the worker and the broker" in dev.output()


def test_a_worker_whose_dev_is_killed_exits_by_itself(dev: Dev, fault_figures: Callable[[str], None]) -> None:
    dev.wait_for(lambda: "meterwatch is consuming" in dev.output(), "healthy worker", timeout=90)
    children = dev.children()
    assert any(is_worker(p) for p in children), children
    killed_at = time.monotonic()
    dev.process.kill()
    dev.process.wait()
    left = wait_until_gone([*children, *tagged(TAG, dev.tag)], killed_at + DEV_STOP_SECONDS)
    fault_figures(f"dev SIGKILLed: its worker and broker gone after {time.monotonic() - killed_at:.1f}s")
    assert not left, f"still running after dev was killed: {[(p.pid, p.command) for p in left]}"


# --- meterwatch worker ---------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of the test's own, which it may kill."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as started:
        yield started


def worker_environment(tmp_path: Path, bootstrap: str, shutdown_timeout: str | None) -> dict[str, str]:
    env = {
        **clean_environment(tmp_path, uuid.uuid4().hex),
        "METERWATCH_KAFKA_BOOTSTRAP": bootstrap,
        "METERWATCH_PARTITIONS": "2",
        "METERWATCH_WEB_PORT": str(free_port()),
        "METERWATCH_DATA_DIR": str(tmp_path / "data"),
        "METERWATCH_AUTH_SECRET": TEST_AUTH_SECRET,
    }
    if shutdown_timeout is not None:
        env["METERWATCH_SHUTDOWN_TIMEOUT"] = shutdown_timeout
    return env


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", web_port=int(env["METERWATCH_WEB_PORT"]))
        started.append(worker.start())
        worker.wait_healthy()
        return worker

    yield start
    for worker in started:
        worker.kill()
        print(f"\n--- worker log tail ---\n{worker.log_tail(15)}")


def sigterm_and_wait(worker: WorkerProcess, timeout: float) -> tuple[int | None, float]:
    assert worker.process is not None
    sent_at = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        code: int | None = worker.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - sent_at


def test_a_worker_whose_broker_is_gone_exits_within_the_shutdown_timeout(
    tmp_path: Path,
    broker: EmbeddedBroker,
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fault_figures: Callable[[str], None],
) -> None:
    worker = start_worker(worker_environment(tmp_path, broker.bootstrap, "5s"))
    broker.stop()
    # Once the consumer is retrying, Faust's stop often never ends: aiokafka's fetcher close
    # re-raises the cancellation of a fetch waiting out its retry backoff, the consumer thread dies
    # without reporting it stopped, and mode waits a minute for it. Whether a fetch is in its
    # backoff at that moment is chance (about half the runs); the next test gives up every time.
    time.sleep(2.0)
    code, seconds = sigterm_and_wait(worker, timeout=10.0)
    log = worker.log_path.read_text(errors="replace")
    gave_up = [line for line in log.splitlines() if GIVE_UP_LINE in line]
    outcome = "still running" if code is None else gave_up[0].split(": ", 1)[1] if gave_up else "stopped in good order"
    fault_figures(f"worker SIGTERMed with its broker gone (timeout 5s): exit {code} after {seconds:.1f}s; {outcome}")
    assert code is not None, f"worker still running 10s after SIGTERM:\n{worker.log_tail(30)}"
    # Either Faust's stop finished by itself or the worker gave up on it, saying so once.
    if code == 0:
        assert not gave_up, log[-3000:]
    else:
        assert code == 3, worker.log_tail(30)
        assert len(gave_up) == 1, worker.log_tail(30)
        assert 5.0 <= seconds < 7.0


def test_a_stop_longer_than_the_shutdown_timeout_is_cut_short_with_one_line(
    tmp_path: Path,
    broker: EmbeddedBroker,
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fault_figures: Callable[[str], None],
) -> None:
    # Faust's orderly stop takes a second or two: a third of a second is always too short.
    worker = start_worker(worker_environment(tmp_path, broker.bootstrap, "0.3s"))
    code, seconds = sigterm_and_wait(worker, timeout=10.0)
    gave_up = [line for line in worker.log_path.read_text(errors="replace").splitlines() if GIVE_UP_LINE in line]
    fault_figures(f"worker SIGTERMed with a 0.3s shutdown timeout: exit {code} after {seconds:.1f}s; {gave_up}")
    assert code == 3, worker.log_tail(30)
    assert seconds < 3.0
    assert len(gave_up) == 1, worker.log_tail(30)
    assert "still stopping after 0.3s (" in gave_up[0] and "exiting now" in gave_up[0]


def test_a_worker_with_its_broker_up_stops_in_good_order(
    tmp_path: Path,
    broker: EmbeddedBroker,
    start_worker: Callable[[dict[str, str]], WorkerProcess],
    fault_figures: Callable[[str], None],
) -> None:
    worker = start_worker(worker_environment(tmp_path, broker.bootstrap, None))  # default: 20 s
    code, seconds = sigterm_and_wait(worker, timeout=25.0)
    fault_figures(f"worker SIGTERMed with its broker up: exit {code} after {seconds:.1f}s")
    assert code == 0, worker.log_tail(30)
    assert seconds < 10.0, "an orderly stop should take a small part of the 20 s timeout"
    assert GIVE_UP_LINE not in worker.log_path.read_text(errors="replace")


def test_a_worker_whose_parent_dies_stops_by_itself(
    tmp_path: Path, broker: EmbeddedBroker, fault_figures: Callable[[str], None]
) -> None:
    """``--parent-pid``: the check that stands in for Linux's parent-death signal elsewhere."""
    # Bounded, so that the test measures how soon the worker notices, not how long it takes to stop.
    env = worker_environment(tmp_path, broker.bootstrap, "5s")
    log_path = tmp_path / "worker.log"
    # A parent that starts the worker without a parent-death signal, then waits to be killed.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            f"log = open({str(log_path)!r}, 'wb')\n"
            "subprocess.Popen([sys.executable, '-m', 'meterwatch', 'worker', '--parent-pid', str(os.getpid())],"
            " stdout=log, stderr=subprocess.STDOUT, start_new_session=True)\n"
            "time.sleep(600)\n",
        ],
        env=env,
    )
    worker: Proc | None = None
    try:
        deadline = time.monotonic() + 90
        while not healthy(int(env["METERWATCH_WEB_PORT"])):
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.3)
        worker = next(p for p in children_of(parent.pid) if is_worker(p))
        killed_at = time.monotonic()
        parent.kill()
        parent.wait()
        left = wait_until_gone([worker], killed_at + 10.0)
        seconds = time.monotonic() - killed_at
        fault_figures(f"worker whose parent was SIGKILLed (--parent-pid): gone after {seconds:.1f}s")
        assert not left, log_path.read_text(errors="replace")[-3000:]
        assert "parent process" in log_path.read_text(errors="replace")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker is not None:
            worker.kill()
        else:
            for proc in tagged(TAG, env[TAG]):
                if read_proc(proc.pid) is not None and is_worker(proc):
                    proc.kill()
