"""Fixtures that start things are named for what they give; docs/testing.md says what runs where."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.brokers import TestBroker, test_broker
from tests.support.kafka_security import grant_deployment, session_listener
from tests.support.smtp import MailRecorder, SmtpServer
from tests.support.worker import TEST_AUTH_SECRET, WorkerProcess, free_port


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TestBroker]:
    with test_broker() as broker:
        print(f"\n[meterwatch tests] integration broker: {broker.kind} at {broker.bootstrap}")
        secured = session_listener()
        if secured is not None:
            print(f"[meterwatch tests] workers connect through SASL_SSL ({secured.mechanism}) at {secured.bootstrap}")
        yield broker


@pytest.fixture
def deployment(kafka_broker: TestBroker, tmp_path: Path) -> dict[str, str]:
    """Environment for one isolated deployment: its own topic prefix, app id and data (and, on a
    secured broker, the ACLs its workers' principal needs)."""
    unique = uuid.uuid4().hex[:8]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")},
        "METERWATCH_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "METERWATCH_TOPIC_PREFIX": f"t{unique}.",
        "METERWATCH_APP_ID": f"mw{unique}",
        "METERWATCH_PARTITIONS": "4",
        "METERWATCH_WEB_PORT": str(free_port()),
        "METERWATCH_DATA_DIR": str(tmp_path / "data"),
        "METERWATCH_LOG_LEVEL": "INFO",
        "METERWATCH_AUTH_SECRET": TEST_AUTH_SECRET,
    }
    grant_deployment(env)
    return env


@contextlib.contextmanager
def healthy_worker(env: dict[str, str], log_path: Path) -> Iterator[WorkerProcess]:
    """One worker on ``env``'s web port, healthy; stopped afterwards, with its log's tail printed."""
    worker = WorkerProcess(env=env, log_path=log_path, web_port=int(env["METERWATCH_WEB_PORT"]))
    worker.start()
    try:
        worker.wait_healthy()
        yield worker
    finally:
        worker.stop()
        print(f"\n--- worker log tail ---\n{worker.log_tail(30)}")


@pytest.fixture
def running_worker(deployment: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    with healthy_worker(deployment, tmp_path / "worker.log") as worker:
        yield worker


@pytest.fixture
def smtp_recorder() -> MailRecorder:
    """What ``smtp_server`` hands each accepted mail to; a module may override it with its own handler."""
    return MailRecorder()


@pytest.fixture
def smtp_server(smtp_recorder: MailRecorder) -> Iterator[SmtpServer]:
    """A real SMTP server on a free loopback port; a test may stop and start it again (an outage)."""
    server = SmtpServer(free_port(), recorder=smtp_recorder).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_sender() -> str:
    """The address ``mailing_worker`` sends from; a module may override it."""
    return "meterwatch@billing.example.com"


@pytest.fixture
def mailing_worker(
    deployment: dict[str, str], smtp_server: SmtpServer, smtp_sender: str, tmp_path: Path
) -> Iterator[WorkerProcess]:
    """``running_worker``, mailing through ``smtp_server`` from ``smtp_sender``."""
    env = {
        **deployment,
        "METERWATCH_SMTP_HOST": "127.0.0.1",
        "METERWATCH_SMTP_PORT": str(smtp_server.port),
        "METERWATCH_SMTP_FROM": smtp_sender,
    }
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        yield worker


FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture
def fault_figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Prints a fault test's figures and repeats them at the end of the run, where CI's log shows
    them even when output is captured (every fault test prints its figures)."""

    def record(text: str) -> None:
        print(text)
        request.config.stash.setdefault(FIGURES, []).append(f"{request.node.nodeid}\n{text.strip()}")

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("fault suite figures")
        for text in figures:
            terminalreporter.write_line(text)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration and tests/faults talks to a real broker.
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "faults" in parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def two_workers(deployment: dict[str, str], tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Two workers of one deployment (one consumer group), both healthy."""
    workers = []
    for index in range(2):
        port = free_port()
        env = {**deployment, "METERWATCH_WEB_PORT": str(port), "METERWATCH_DATA_DIR": str(tmp_path / f"data{index}")}
        workers.append(WorkerProcess(env=env, log_path=tmp_path / f"worker{index}.log", web_port=port).start())
    try:
        for worker in workers:
            worker.wait_healthy()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
