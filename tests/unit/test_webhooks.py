"""Webhook decisions without I/O (core.webhooks): the signature, the ledger key, what an HTTP
status means and when a failing delivery is tried again; the webhook settings; and the sink
that asks for each alert, Fin transition and notification to be posted."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from meterwatch.config.settings import ConfigError, load_settings
from meterwatch.core.mail_retry import Backoff, GiveUp, RetryIn, RetryPolicy, after_failed_attempt
from meterwatch.core.webhooks import Answer, classify, delivery_key, event_and_id, signature
from meterwatch.models.common import dumps
from meterwatch.models.outputs import Kind, Output
from meterwatch.sinks.webhook import WebhookRequestSink

SECRET = "whsec-0123456789abcdef0123456789abcdef"


def expected_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The receiver's side, written out: HMAC-SHA256 over "<t>.<body>", hex."""
    signed = f"{timestamp}.".encode() + body
    return f"t={timestamp},v1={hmac.new(secret, signed, hashlib.sha256).hexdigest()}"


@pytest.mark.parametrize(
    ("secret", "timestamp", "body"),
    [
        (SECRET.encode(), 1_700_000_000, b'{"alert_id":"a1"}'),
        (SECRET.encode(), 0, b""),
        (b"k" * 32, 1_764_806_400, '{"title":"Fin AI Agent has been paused \u2014 caf\u00e9"}'.encode()),
        (bytes(range(64)), 4_102_444_800, b'{"a":1}\n'),  # a newline in the body is signed as it is
    ],
)
def test_the_signature_is_an_hmac_sha256_of_the_timestamp_and_the_body(
    secret: bytes, timestamp: int, body: bytes
) -> None:
    assert signature(secret, timestamp, body) == expected_signature(secret, timestamp, body)


def test_a_known_signature_vector() -> None:
    # Computed once with: printf '1700000000.{}' | openssl dgst -sha256 -hmac key
    digest = hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert signature(b"key", 1_700_000_000, b"{}") == f"t=1700000000,v1={digest}"
    assert signature(b"key", 1_700_000_000, b"{}") != signature(b"key", 1_700_000_001, b"{}")
    assert signature(b"key", 1_700_000_000, b"{}") != signature(b"kez", 1_700_000_000, b"{}")


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        (200, Answer.DELIVERED),
        (201, Answer.DELIVERED),
        (204, Answer.DELIVERED),
        (299, Answer.DELIVERED),
        (100, Answer.RETRY),
        (301, Answer.RETRY),  # a redirect is not followed; retried until the endpoint is corrected
        (302, Answer.RETRY),
        (400, Answer.REFUSED),
        (401, Answer.REFUSED),
        (403, Answer.REFUSED),
        (404, Answer.REFUSED),
        (410, Answer.REFUSED),
        (422, Answer.REFUSED),
        (408, Answer.RETRY),
        (425, Answer.RETRY),
        (429, Answer.RETRY),
        (500, Answer.RETRY),
        (502, Answer.RETRY),
        (503, Answer.RETRY),
        (504, Answer.RETRY),
    ],
)
def test_what_a_status_means(status: int, answer: Answer) -> None:
    assert classify(status) is answer


def test_the_backoff_schedule_doubles_to_its_cap_and_gives_up_at_the_webhook_age() -> None:
    policy = RetryPolicy(give_up_after=load_settings({}).webhook_give_up_after, backoff=Backoff())
    requested = datetime(2026, 12, 1, tzinfo=UTC)
    delays = [
        after_failed_attempt(requested, requested + timedelta(seconds=1), attempts, policy, jitter=0.999999)
        for attempts in range(1, 11)
    ]
    assert [round(delay.seconds, 3) for delay in delays] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60, 60]  # type: ignore[union-attr]
    assert after_failed_attempt(requested, requested + timedelta(hours=24), 99, policy, 0.5) == GiveUp(
        timedelta(hours=24)
    )
    assert after_failed_attempt(requested, requested + timedelta(hours=24, seconds=-3), 99, policy, 1.0) == RetryIn(3.0)


def test_each_record_and_endpoint_has_its_own_ledger_key_that_names_no_url() -> None:
    url = "https://hooks.example.com/in?token=t0p"
    key = delivery_key("alert-1", url)
    assert key.startswith("alert-1 to ") and "hooks.example.com" not in key and "t0p" not in key
    assert key == delivery_key("alert-1", url)
    assert key != delivery_key("alert-1", "https://other.example.com/in")
    assert key != delivery_key("alert-2", url)


@pytest.mark.parametrize(
    ("kind", "record", "expected"),
    [
        (Kind.ALERT, {"alert_id": "a-1"}, ("alert", "a-1")),
        (Kind.FIN_TRANSITION, {"transition_id": "t-1"}, ("limit", "t-1")),
        (Kind.NOTIFICATION, {"notification_id": "n-1", "transition_id": "t-1"}, ("notification", "n-1")),
    ],
)
def test_each_output_kind_has_its_event_and_id(kind: Kind, record: dict[str, str], expected: tuple) -> None:
    assert event_and_id(kind.value, record) == expected


class RecordingKafka:
    def __init__(self) -> None:
        self.published: list[Output] = []

    async def publish(self, output: Output) -> None:
        self.published.append(output)


def test_the_sink_requests_a_webhook_for_alerts_transitions_and_notifications_only() -> None:
    kafka = RecordingKafka()
    sink = WebhookRequestSink(kafka)  # type: ignore[arg-type]
    alert = {"alert_id": "a-1", "workspace_id": "ws-1", "usage": 12, "title": "caf\u00e9"}
    outputs = [
        Output(Kind.ALERT, "ws-1", alert),
        Output(Kind.FIN_TRANSITION, "ws-1", dumps({"transition_id": "t-1", "workspace_id": "ws-1"})),
        Output(Kind.NOTIFICATION, "ws-1", {"notification_id": "n-1", "workspace_id": "ws-1"}),
        Output(Kind.DEAD_LETTER, None, {"error": {"code": "invalid_json"}}),
        Output(Kind.MAIL_REQUEST, "a-1", b"{}"),
        Output(Kind.COMMAND_RESULT, None, {"command_id": "c"}),
    ]

    async def run() -> None:
        for output in outputs:
            await sink.publish(output)
        await sink.flush()

    asyncio.run(run())
    assert [(o.kind, o.key) for o in kafka.published] == [
        (Kind.WEBHOOK_REQUEST, "a-1"),
        (Kind.WEBHOOK_REQUEST, "t-1"),
        (Kind.WEBHOOK_REQUEST, "n-1"),
    ]
    requests = [orjson.loads(o.record) for o in kafka.published]
    assert [(r["event"], r["id"]) for r in requests] == [("alert", "a-1"), ("limit", "t-1"), ("notification", "n-1")]
    # The body is the record's bytes exactly as they go to its topic.
    assert requests[0]["body"].encode() == dumps(alert)
    assert requests[1]["body"].encode() == dumps({"transition_id": "t-1", "workspace_id": "ws-1"})


def webhook_env(**extra: str) -> dict[str, str]:
    return {"METERWATCH_WEBHOOK_URLS": "https://a.example.com/in", "METERWATCH_WEBHOOK_SECRET": SECRET, **extra}


def test_webhooks_are_off_by_default() -> None:
    settings = load_settings({})
    assert settings.webhook_endpoints == ()
    assert settings.webhook_secret is None
    assert settings.webhook_give_up_after == timedelta(hours=24)


def test_the_webhook_settings_are_read(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    settings = load_settings(
        webhook_env(
            METERWATCH_WEBHOOK_URLS=" https://a.example.com/in , http://127.0.0.1:8080/hook,http://[::1]:9/x",
            METERWATCH_WEBHOOK_CA_FILE=str(ca),
            METERWATCH_WEBHOOK_GIVE_UP_AFTER="90m",
        )
    )
    assert settings.webhook_endpoints == (
        "https://a.example.com/in",
        "http://127.0.0.1:8080/hook",
        "http://[::1]:9/x",
    )
    assert settings.webhook_secret.get_secret_value() == SECRET  # type: ignore[union-attr]
    assert settings.webhook_ca_file == str(ca)
    assert settings.webhook_give_up_after == timedelta(minutes=90)
    assert SECRET not in repr(settings) and SECRET not in str(settings.redacted())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METERWATCH_WEBHOOK_SECRET": ""}, "METERWATCH_WEBHOOK_URLS is set but METERWATCH_WEBHOOK_SECRET is not"),
        ({"METERWATCH_WEBHOOK_SECRET": "x" * 31}, "METERWATCH_WEBHOOK_SECRET: must be at least 32 bytes"),
        ({"METERWATCH_WEBHOOK_URLS": "http://hooks.example.com/in"}, "endpoint 1: http:// only to a loopback host"),
        ({"METERWATCH_WEBHOOK_URLS": "https://a.example.com,ftp://b.example.com"}, "endpoint 2: expected an https://"),
        ({"METERWATCH_WEBHOOK_URLS": "https://user:pw@a.example.com/"}, "endpoint 1: credentials in the URL"),
        ({"METERWATCH_WEBHOOK_URLS": "https:///path"}, "endpoint 1: no host"),
        ({"METERWATCH_WEBHOOK_URLS": "https://a.example.com:99999/"}, "endpoint 1: not a URL"),
        ({"METERWATCH_WEBHOOK_URLS": "https://a.example.com,https://a.example.com"}, "listed twice"),
        ({"METERWATCH_WEBHOOK_CA_FILE": "/nonexistent/ca.pem"}, "METERWATCH_WEBHOOK_CA_FILE: no such file"),
        ({"METERWATCH_WEBHOOK_GIVE_UP_AFTER": "0s"}, "METERWATCH_WEBHOOK_GIVE_UP_AFTER: must be a positive duration"),
    ],
)
def test_a_bad_webhook_setting_is_one_line_naming_it(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(webhook_env(**env))
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert SECRET not in text and "pw@" not in text and "x" * 31 not in text
