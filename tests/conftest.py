"""Fixtures that start things are named for what they give; the README's "Tests" section says what runs where."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.brokers import TestBroker, test_broker
from tests.support.worker import WorkerProcess, free_port


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TestBroker]:
    with test_broker() as broker:
        print(f"\n[meterwatch tests] integration broker: {broker.kind} at {broker.bootstrap}")
        yield broker


@pytest.fixture
def deployment(kafka_broker: TestBroker, tmp_path: Path) -> dict[str, str]:
    """Environment for one isolated deployment: its own topic prefix, app id and data."""
    unique = uuid.uuid4().hex[:8]
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")},
        "METERWATCH_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "METERWATCH_TOPIC_PREFIX": f"t{unique}.",
        "METERWATCH_APP_ID": f"mw{unique}",
        "METERWATCH_PARTITIONS": "4",
        "METERWATCH_WEB_PORT": str(free_port()),
        "METERWATCH_DATA_DIR": str(tmp_path / "data"),
        "METERWATCH_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def running_worker(deployment: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(env=deployment, log_path=tmp_path / "worker.log", web_port=int(deployment["METERWATCH_WEB_PORT"]))
    worker.start()
    try:
        worker.wait_healthy()
        yield worker
    finally:
        worker.stop()
        print(f"\n--- worker log tail ---\n{worker.log_tail(30)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration and tests/faults talks to a real broker.
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "faults" in parts:
            item.add_marker(pytest.mark.integration)
