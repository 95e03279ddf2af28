"""The embedded Tansu broker and the start-up probes, against a real broker process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from meterwatch.brokers.embedded import EmbeddedBroker, EmbeddedBrokerError
from meterwatch.brokers.probe import BrokerUnreachable, broker_supports_transactions, wait_for_broker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _is_dead(pid: int) -> bool:
    # A zombie is dead too: it is what is left if nobody reaps an orphan (e.g. a minimal init).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.asyncio
async def test_round_trip_through_a_consumer_group(broker: EmbeddedBroker) -> None:
    topic = f"round-trip-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=8, replication_factor=1)])
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 8

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    # Tansu completes a group join after half the session timeout, so keep it short.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"group-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
    )
    await producer.start()
    await consumer.start()
    try:
        sent = await producer.send_and_wait(topic, key=b"workspace-1", value=b"hello")
        message = await asyncio.wait_for(consumer.getone(), timeout=15)
        await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    assert (message.key, message.value) == (b"workspace-1", b"hello")
    assert (message.partition, message.offset) == (sent.partition, sent.offset)


@pytest.mark.asyncio
async def test_the_embedded_broker_has_no_transactions(broker: EmbeddedBroker) -> None:
    started = time.monotonic()
    assert await broker_supports_transactions(broker.bootstrap, timeout=10.0) is False
    assert time.monotonic() - started < 3


@pytest.mark.asyncio
async def test_wait_for_broker_returns_once_the_broker_answers(broker: EmbeddedBroker) -> None:
    await wait_for_broker(broker.bootstrap, timeout=5.0)


@pytest.mark.asyncio
async def test_wait_for_broker_on_a_closed_port_raises_quickly() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnreachable) as raised:
        await wait_for_broker(bootstrap, timeout=0.5)
    assert time.monotonic() - started < 2
    assert str(raised.value) == f"no Kafka broker answers at {bootstrap}"


@pytest.mark.asyncio
async def test_transaction_probe_does_not_mistake_an_outage_for_a_no() -> None:
    with pytest.raises(BrokerUnreachable):
        await broker_supports_transactions(f"127.0.0.1:{_closed_port()}", timeout=0.5)


def test_stop_ends_the_broker_process() -> None:
    broker = EmbeddedBroker().start()
    pid, bootstrap = broker.pid, broker.bootstrap
    assert pid is not None and bootstrap.startswith("127.0.0.1:")
    broker.stop()
    broker.stop()  # idempotent
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with pytest.raises(EmbeddedBrokerError):
        _ = broker.bootstrap


def test_log_path_receives_the_broker_output(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        port = broker.bootstrap.rsplit(":", 1)[1]
    assert f"listening on: tcp://127.0.0.1:{port}" in log.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_broker_dies_with_a_hard_killed_parent() -> None:
    script = textwrap.dedent(
        """
        import time
        from meterwatch.brokers.embedded import EmbeddedBroker
        broker = EmbeddedBroker().start()
        print(broker.pid, broker.bootstrap, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert parent.stdout is not None
        pid_text, _ = parent.stdout.readline().split()
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while not _is_dead(int(pid_text)) and time.monotonic() < deadline:
            time.sleep(0.02)
        # Not checked: that the port is closed; other processes may take it at once.
        assert _is_dead(int(pid_text))
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_a_missing_binary_is_a_one_line_error() -> None:
    with pytest.raises(EmbeddedBrokerError, match="^cannot run the Tansu broker binary /nonexistent/tansu"):
        EmbeddedBroker(binary="/nonexistent/tansu").start()


def test_a_bad_calf_tansu_bin_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(EmbeddedBrokerError, match="^no Tansu broker binary: CALF_TANSU_BIN="):
        EmbeddedBroker().start()


def test_a_broker_that_never_answers_times_out_and_is_stopped(tmp_path: Path) -> None:
    silent = tmp_path / "silent-broker"
    pid_file = tmp_path / "pid"
    silent.write_text(f"#!/bin/sh\necho $$ > {pid_file}\necho 'not a broker'\nexec sleep 30\n")
    silent.chmod(0o755)
    broker = EmbeddedBroker(binary=str(silent), start_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(EmbeddedBrokerError, match=r"did not answer .* within 0\.3s: not a broker$"):
        broker.start()
    assert time.monotonic() - started < 3
    assert broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
