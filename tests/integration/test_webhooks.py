"""Webhooks end to end (CONTRACT 5.7): a real worker, the suite's broker and a real local HTTPS
receiver with a certificate made here, trusted through ``METERWATCH_WEBHOOK_CA_FILE``.

Three endpoints: a healthy one, one answering 503 until it is told to recover, and one answering
400. The healthy endpoint receives each alert, Fin transition and notification once, signed and
with the record's own bytes, while the failing one is still being retried; the failing one
receives each once after it recovers; the refusing one is asked once per record and each
refusal is a ``webhook_refused`` dead letter; after a restart nothing settled is posted again.
An endpoint that is down past ``METERWATCH_WEBHOOK_GIVE_UP_AFTER`` leaves a ``webhook_given_up``
dead letter. The sender on its own: a slow endpoint is a failure for now, a redirect is not
followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meterwatch.sinks.webhook import Delivery, WebhookSender

from tests.conftest import healthy_worker
from tests.support.kafka_io import apply_commands, produce, read_all, read_records
from tests.support.messages import command, event
from tests.support.worker import WorkerProcess, eventually, free_port, metric_samples

SECRET = "whsec-integration-0123456789abcdef0123"
WS = "ws-hooks"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """What the endpoints answered, in order; ``/flaky`` answers 503 while ``failing``."""

    failing: bool = True
    requests: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = {"/healthy": 200, "/refuse": 400, "/flaky": 503 if self.failing else 204}[request.path]
        self.requests.append(Received(request.path, dict(request.headers), await request.read(), status))
        return web.Response(status=status)

    def at(self, path: str, status: int | None = None) -> list[Received]:
        return [r for r in self.requests if r.path == path and (status is None or r.status == status)]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meterwatch test receiver")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "receiver.pem", directory / "receiver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[Receiver, str, Path]]:
    """The receiver, its base URL and the CA file that trusts it."""
    cert_path, key_path = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    state = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield state, f"https://127.0.0.1:{port}", cert_path
    finally:
        await runner.cleanup()


@pytest.fixture
def webhook_worker(
    deployment: dict[str, str], receiver: tuple[Receiver, str, Path], tmp_path: Path
) -> Iterator[WorkerProcess]:
    _, base, ca_file = receiver
    env = {
        **deployment,
        "METERWATCH_WEBHOOK_URLS": f"{base}/healthy,{base}/flaky,{base}/refuse",
        "METERWATCH_WEBHOOK_SECRET": SECRET,
        "METERWATCH_WEBHOOK_CA_FILE": str(ca_file),
    }
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        yield worker


def verify_signature(received: Received, tolerance: float = 300.0) -> None:
    """The receiver's check, made independently of meterwatch's code."""
    parts = dict(item.split("=", 1) for item in received.headers["X-Meterwatch-Signature"].split(","))
    timestamp = int(parts["t"])
    assert abs(time.time() - timestamp) < tolerance
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + received.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(parts["v1"], expected), "bad signature"


def metric_total(worker: WorkerProcess, name: str, **labels: str) -> float:
    return sum(v for got, v in metric_samples(worker, name) if all(got.get(k) == w for k, w in labels.items()))


async def test_each_record_reaches_each_endpoint_once_signed_and_one_outage_holds_up_no_other(
    webhook_worker: WorkerProcess, receiver: tuple[Receiver, str, Path], deployment: dict[str, str]
) -> None:
    state, _, _ = receiver
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    await apply_commands(
        deployment,
        [
            command("alert_settings", WS, metric="sms", threshold=10, early_warnings=False, enabled=True),
            command("limit_settings", WS, metric="fin_resolutions", limit=1, enabled=True),
        ],
    )
    await produce(
        bootstrap,
        prefix + "usage.events",
        [(WS.encode(), event(WS, "sms", 10)), (WS.encode(), event(WS, "fin_resolutions", 1, "conv-1"))],
    )
    [alert] = await read_all(bootstrap, prefix + "usage.alerts", expect=1)
    limits = await eventually(lambda: read_all(bootstrap, prefix + "usage.limits", timeout=3), timeout=30)
    [notification] = await read_all(bootstrap, prefix + "usage.notifications", expect=1)
    assert any(limit["state"] == "disabled" for limit in limits)
    expected = {
        alert["alert_id"]: ("alert", "usage.alerts"),
        notification["notification_id"]: ("notification", "usage.notifications"),
        **{limit["transition_id"]: ("limit", "usage.limits") for limit in limits},
    }
    once = Counter(set(expected))
    id_fields = {"usage.alerts": "alert_id", "usage.limits": "transition_id", "usage.notifications": "notification_id"}
    published = await asyncio.gather(*(read_records(bootstrap, prefix + name) for name in id_fields))
    raw = {
        name: {orjson.loads(m.value)[id_field]: m.value for m in records}
        for (name, id_field), records in zip(id_fields.items(), published, strict=True)
    }

    # The healthy endpoint has every record while the flaky one is still answering 503.
    await eventually(lambda: len(state.at("/healthy")) >= len(expected), timeout=30)
    assert state.at("/flaky") and not state.at("/flaky", 204)
    healthy = state.at("/healthy")
    assert Counter(r.headers["X-Meterwatch-Id"] for r in healthy) == once  # each once
    for received in healthy:
        verify_signature(received)
        record_id = received.headers["X-Meterwatch-Id"]
        event_name, topic = expected[record_id]
        assert received.headers["X-Meterwatch-Event"] == event_name
        assert received.headers["Content-Type"] == "application/json"
        assert received.body == raw[topic][record_id]  # the record exactly as published

    # Recovered: the flaky endpoint gets each record once, with a fresh valid signature.
    state.failing = False
    await eventually(lambda: len(state.at("/flaky", 204)) >= len(expected), timeout=45)
    flaky = state.at("/flaky", 204)
    assert Counter(r.headers["X-Meterwatch-Id"] for r in flaky) == once
    for received in flaky:
        verify_signature(received)
        assert (
            received.body == raw[expected[received.headers["X-Meterwatch-Id"]][1]][received.headers["X-Meterwatch-Id"]]
        )

    # The refusing endpoint was asked once per record; each refusal is dead-lettered.
    letters = await read_all(bootstrap, prefix + "usage.dead-letter", expect=len(expected), timeout=20)
    assert sorted(letter["error"]["code"] for letter in letters) == ["webhook_refused"] * len(expected)
    assert {letter["source_topic"] for letter in letters} == {
        f"{prefix}{deployment['METERWATCH_APP_ID']}-webhook-requests"
    }
    assert all(any(record_id in letter["error"]["message"] for record_id in expected) for letter in letters)
    assert all(
        "HTTP 400" in letter["error"]["message"] and "127.0.0.1" not in letter["error"]["message"] for letter in letters
    )
    assert Counter(r.headers["X-Meterwatch-Id"] for r in state.at("/refuse")) == once

    await eventually(
        lambda: metric_total(webhook_worker, "meterwatch_webhooks_sent_total") == 2 * len(expected), timeout=10
    )
    assert metric_total(webhook_worker, "meterwatch_webhooks_failed_total", reason="refused") == len(expected)
    assert metric_total(webhook_worker, "meterwatch_webhook_retries_total") >= len(expected)
    assert metric_total(webhook_worker, "meterwatch_webhook_backlog") == 0
    assert SECRET not in webhook_worker.log_path.read_text(errors="replace")

    # Settled means never again: a restart posts nothing to any endpoint.
    posted = len(state.requests)
    webhook_worker.stop()
    webhook_worker.start()
    webhook_worker.wait_healthy()
    await asyncio.sleep(3)
    assert len(state.requests) == posted
    assert len(await read_all(bootstrap, prefix + "usage.dead-letter", timeout=2)) == len(expected)


async def test_an_endpoint_down_past_the_give_up_age_is_dead_lettered_and_counted(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    env = {
        **deployment,
        "METERWATCH_WEBHOOK_URLS": f"https://127.0.0.1:{free_port()}/nobody-listens",
        "METERWATCH_WEBHOOK_SECRET": SECRET,
        "METERWATCH_WEBHOOK_GIVE_UP_AFTER": "2s",
    }
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        await apply_commands(
            deployment,
            [command("alert_settings", WS, metric="sms", threshold=10, early_warnings=False, enabled=True)],
        )
        await produce(bootstrap, prefix + "usage.events", [(WS.encode(), event(WS, "sms", 10))])
        [alert] = await read_all(bootstrap, prefix + "usage.alerts", expect=1)
        [letter] = await read_all(bootstrap, prefix + "usage.dead-letter", expect=1, timeout=30)
        assert letter["error"]["code"] == "webhook_given_up"
        assert alert["alert_id"] in letter["error"]["message"] and "nobody-listens" not in letter["error"]["message"]
        await eventually(
            lambda: metric_total(worker, "meterwatch_webhooks_failed_total", reason="given_up") == 1, timeout=10
        )
        assert metric_total(worker, "meterwatch_webhook_retries_total") >= 1
        assert metric_total(worker, "meterwatch_webhooks_sent_total") == 0


async def test_the_sender_retries_a_slow_endpoint_and_does_not_follow_a_redirect() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(status=200)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    app = web.Application()
    app.router.add_post("/slow", slow)
    app.router.add_post("/moved", moved)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        sender = WebhookSender(SECRET.encode(), timeout=0.5)
        base = f"http://127.0.0.1:{port}"
        slow_result = await sender.send(Delivery(f"{base}/slow", "alert", "a-1", b"{}"))
        assert slow_result.needs_retry and "Timeout" in (slow_result.transient_error or "")
        moved_result = await sender.send(Delivery(f"{base}/moved", "alert", "a-1", b"{}"))
        assert moved_result.needs_retry and moved_result.transient_error == "HTTP 302"
        refused = await WebhookSender(SECRET.encode()).send(
            Delivery(f"http://127.0.0.1:{free_port()}/", "alert", "a", b"{}")
        )
        assert refused.needs_retry and not refused.accepted
    finally:
        await runner.cleanup()
