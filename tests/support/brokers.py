"""The broker the integration tests talk to, chosen once per test session:

1. ``METERWATCH_TEST_BOOTSTRAP`` names an external broker (CI starts Apache Kafka and sets it);
2. else testcontainers' Kafka, when a Docker engine answers;
3. else the embedded broker (Tansu), which needs nothing installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class TestBroker:
    __test__ = False  # a fixture's value, not a test class for pytest to collect
    bootstrap: str
    kind: str  # "external", "testcontainers" or "embedded"
    transactions: bool


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def test_broker() -> Iterator[TestBroker]:
    external = os.environ.get("METERWATCH_TEST_BOOTSTRAP")
    if external:
        kind = os.environ.get("METERWATCH_TEST_BROKER_KIND", "external")
        yield TestBroker(external, kind, transactions=kind != "embedded")
        return
    if os.environ.get("METERWATCH_TEST_DOCKER", "auto") != "never" and _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield TestBroker(kafka.get_bootstrap_server(), "testcontainers", transactions=True)
        return
    from meterwatch.brokers.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield TestBroker(broker.bootstrap, "embedded", transactions=False)
