"""Against Apache Kafka with SASL_SSL (SCRAM-SHA-512) and ACLs: a worker granted only what
``meterwatch acls`` prints works; a product service granted Write on ``usage.events`` alone is
counted and cannot write ``usage.control``; a principal without those grants is refused at
start-up in one line.

These need the secured broker (``METERWATCH_TEST_SASL_SSL``, set by CI's SASL_SSL pass in
``.ci/run``); elsewhere they are skipped, and the rest of the suite runs without security.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import TopicAuthorizationFailedError
from meterwatch.streams.topics import AclBinding

from tests.conftest import healthy_worker
from tests.support.kafka_io import read_all
from tests.support.kafka_security import PRODUCER_USER, grant, session_listener
from tests.support.messages import command, event
from tests.support.worker import eventually, http_get

pytestmark = pytest.mark.skipif(
    session_listener() is None, reason="needs a SASL_SSL broker with ACLs (METERWATCH_TEST_SASL_SSL; CI runs it)"
)

WS = "ws_secured"


async def test_a_service_allowed_usage_events_only_is_counted_and_cannot_send_commands(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    listener = session_listener()
    assert listener is not None
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    events, control = prefix + "usage.events", prefix + "usage.control"
    await grant(listener.plain_bootstrap, f"User:{PRODUCER_USER}", [AclBinding("topic", events, False, ("Write",))])

    with healthy_worker(deployment, tmp_path / "worker.log") as worker:
        started = next(line for line in worker.log_tail(200).splitlines() if "starting worker:" in line)
        assert f"kafka {listener.bootstrap} (SASL_SSL, SCRAM-SHA-512 as meterwatch)" in started

        producer = AIOKafkaProducer(**listener.client_options(PRODUCER_USER), acks="all")
        await producer.start()
        try:
            for _ in range(7):
                await producer.send_and_wait(events, orjson.dumps(event(WS, "sms", 3)), key=WS.encode())
            disable = command("alert_settings", WS, metric="sms", threshold=5, early_warnings=False, enabled=False)
            with pytest.raises(TopicAuthorizationFailedError):
                await asyncio.wait_for(producer.send_and_wait(control, orjson.dumps(disable), key=WS.encode()), 30)
        finally:
            await producer.stop()

        def counted() -> int | None:
            status, body = http_get(f"{worker.base_url}/usage/{WS}")
            return body["metrics"].get("sms", {}).get("usage") if status == 200 else None

        assert await eventually(lambda: counted() == 21, timeout=60)
        # Nothing reached usage.control: no command was answered.
        assert (
            await read_all(deployment["METERWATCH_KAFKA_BOOTSTRAP"], prefix + "usage.command-results", timeout=3) == []
        )


def run_worker_as(env: dict[str, str], user: str, **extra: str) -> subprocess.CompletedProcess[str]:
    listener = session_listener()
    assert listener is not None
    return subprocess.run(
        [sys.executable, "-m", "meterwatch", "worker"],
        env={**env, **listener.worker_settings(user), **extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_principal_without_transactional_ids_stops_a_worker_that_asked_for_exactly_once(
    deployment: dict[str, str],
) -> None:
    result = run_worker_as(deployment, PRODUCER_USER, METERWATCH_PROCESSING_GUARANTEE="exactly_once")

    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("meterwatch: METERWATCH_PROCESSING_GUARANTEE=exactly_once, but the broker at"), last
    assert "an ACL denies this principal its transactional ids" in last


def test_a_principal_that_may_not_create_the_topics_is_told_what_to_grant(deployment: dict[str, str]) -> None:
    result = run_worker_as(deployment, PRODUCER_USER, METERWATCH_PROCESSING_GUARANTEE="at_least_once")

    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    assert last.startswith(f"meterwatch: the broker refused to create topic {prefix}"), last
    assert "TopicAuthorizationFailedError" in last and "`meterwatch acls`" in last
    assert "Traceback" not in result.stderr
