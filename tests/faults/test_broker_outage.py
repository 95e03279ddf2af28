"""The broker stopped for 30 s under load, then started again (fault suite).

The test runs its own single-node Apache Kafka (``.ci/kafka/broker.sh``, jars from Maven) so it
can stop it; the embedded broker keeps nothing across a restart, so this case needs the real
one. The load generator re-sends a batch whose send failed, as a real producer would: event ids
make that safe. At the end every workspace's usage equals what was sent, the worker that lived
through the outage came back by itself, and ``/health`` said ``broker_unreachable`` meanwhile.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tests.support.worker import WorkerProcess, eventually, http_get

BROKER_SH = Path(__file__).resolve().parents[2] / ".ci" / "kafka" / "broker.sh"
WORKSPACES = [f"ws_outage_{i}" for i in range(8)]
OUTAGE_SECONDS = 30.0
BATCH = 50


@dataclass
class OwnBroker:
    data_dir: Path
    bootstrap: str = ""

    def start(self) -> None:
        done = subprocess.run(
            ["bash", str(BROKER_SH), "start", str(self.data_dir)], capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr[-2000:]
        self.bootstrap = next(
            line.split("=", 1)[1] for line in done.stdout.splitlines() if line.startswith("bootstrap=")
        )

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(BROKER_SH), "stop", str(self.data_dir)], capture_output=True, timeout=120, check=False
        )


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    fetched = subprocess.run(["bash", str(BROKER_SH), "classpath"], capture_output=True, text=True, timeout=600)
    if fetched.returncode != 0:
        pytest.skip("needs the Apache Kafka jars (`bash .ci/kafka/broker.sh fetch`; CI fetches them)")
    broker = OwnBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Load:
    """Batches of events, each sent until the broker acknowledges it."""

    bootstrap: str
    topic: str
    sent: Counter[str] = field(default_factory=Counter)
    resends: int = 0
    running: bool = True

    def batch(self) -> list[dict]:
        now = datetime.now(UTC).isoformat()
        return [
            {
                "event_id": uuid.uuid4().hex,
                "workspace_id": WORKSPACES[i % len(WORKSPACES)],
                "metric": "sms",
                "quantity": 1 + i % 3,
                "occurred_at": now,
            }
            for i in range(BATCH)
        ]

    async def run(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", request_timeout_ms=5000, retry_backoff_ms=500
        )
        await producer.start()
        try:
            while self.running:
                events = self.batch()
                await self._send_until_acknowledged(producer, orjson.dumps(events))
                for e in events:
                    self.sent[e["workspace_id"]] += e["quantity"]
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    async def _send_until_acknowledged(self, producer: AIOKafkaProducer, value: bytes) -> None:
        while True:
            try:
                await producer.send_and_wait(self.topic, value)
                return
            except KafkaError:
                self.resends += 1  # the same events again: counted once however often they arrive
                await asyncio.sleep(1.0)


async def test_a_30_second_broker_outage_loses_and_doubles_nothing(
    own_broker: OwnBroker, deployment: dict[str, str], tmp_path: Path, fault_figures: Callable[[str], None]
) -> None:
    env = {**deployment, "METERWATCH_KAFKA_BOOTSTRAP": own_broker.bootstrap}
    worker = WorkerProcess(env=env, log_path=tmp_path / "worker.log", web_port=int(env["METERWATCH_WEB_PORT"]))
    worker.start()
    try:
        worker.wait_healthy()
        load = Load(own_broker.bootstrap, env["METERWATCH_TOPIC_PREFIX"] + "usage.events")
        sending = asyncio.create_task(load.run())
        await asyncio.sleep(5)

        own_broker.stop()
        stopped_at = time.monotonic()
        health_seen: Counter[str] = Counter()
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            status, body = await asyncio.to_thread(http_get, f"{worker.base_url}/health", 2.0)
            health_seen[body.get("status") if isinstance(body, dict) else str(status)] += 1
            await asyncio.sleep(0.5)
        own_broker.start()
        await asyncio.sleep(10)  # load goes on after the outage
        load.running = False
        await asyncio.wait_for(sending, timeout=120)

        def counted() -> dict[str, int]:
            usage = {}
            for ws in WORKSPACES:
                status, body = http_get(f"{worker.base_url}/usage/{ws}")
                usage[ws] = body["metrics"]["sms"]["usage"] if status == 200 else None
            return usage

        try:
            await eventually(lambda: counted() == dict(load.sent), timeout=240, interval=1.0)
        except AssertionError:
            raise AssertionError(f"counted {counted()} != sent {dict(load.sent)}\n{worker.log_tail(60)}") from None
        await asyncio.sleep(5)
        assert counted() == dict(load.sent), "nothing counted twice after catching up"
        assert worker.process is not None and worker.process.poll() is None and worker.starts == 1, (
            "came back by itself"
        )
        status, body = http_get(f"{worker.base_url}/health")
        assert status == 200 and body["status"] == "consuming"
        fault_figures(
            f"\n[broker outage] {sum(load.sent.values()):,} units sent in {len(WORKSPACES)} workspaces, "
            f"{load.resends} batch re-sends; /health during the {OUTAGE_SECONDS:.0f} s outage: {dict(health_seen)}"
        )
        assert health_seen["broker_unreachable"] > 0, f"/health during the outage: {dict(health_seen)}"
    finally:
        worker.stop()
