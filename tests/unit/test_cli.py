"""The ``meterwatch`` command as a person runs it: bad configuration is one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

SECRET = "a-secret-of-at-least-thirty-two-bytes-0123"


def run_meterwatch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``meterwatch ARGS`` with ``env``, over a secret to check tokens with (``env`` may unset it)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")}
    clean["METERWATCH_AUTH_SECRET"] = SECRET
    return subprocess.run(
        [sys.executable, "-m", "meterwatch", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"METERWATCH_WEB_PORT": "70000"}, "METERWATCH_WEB_PORT"),
        ({"METERWATCH_WEB_PORT": "http"}, "METERWATCH_WEB_PORT"),
        ({"METERWATCH_PROCESSING_GUARANTEE": "at_most_once"}, "METERWATCH_PROCESSING_GUARANTEE"),
        ({"METERWATCH_KAFKA_BOOTSTRAP": "kafka-without-port"}, "METERWATCH_KAFKA_BOOTSTRAP"),
        ({"METERWATCH_PARTITIONS": "0"}, "METERWATCH_PARTITIONS"),
        ({"METERWATCH_DEDUPE_WINDOW": "soon"}, "METERWATCH_DEDUPE_WINDOW"),
        ({"METERWATCH_COMMAND_KEYS": "settings:hunter2"}, "METERWATCH_COMMAND_KEYS: the secret of key 'settings'"),
        ({"METERWATCH_COMMAND_KEYS": "no-separator-hunter2"}, "METERWATCH_COMMAND_KEYS: expected key-id:secret"),
        ({"METERWATCH_COMMAND_MAX_AGE": "0"}, "METERWATCH_COMMAND_MAX_AGE: must be a positive duration"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], names: str) -> None:
    result = run_meterwatch("worker", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr  # a secret is never echoed


def test_an_unreachable_broker_is_reported_as_such() -> None:
    port = closed_port()
    result = run_meterwatch(
        "worker",
        env={
            "METERWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            "METERWATCH_STARTUP_TIMEOUT": "2s",
            "METERWATCH_SMTP_PASSWORD": "hunter2-secret",
            "METERWATCH_SMTP_STARTTLS": "true",
        },
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert f"127.0.0.1:{port}" in last and "no Kafka broker answers" in last
    assert "Traceback" not in result.stderr
    assert "hunter2-secret" not in result.stderr + result.stdout


def test_worker_without_a_broker_says_how_to_get_one() -> None:
    result = run_meterwatch("worker", env={})
    assert result.returncode == 2
    assert "METERWATCH_KAFKA_BOOTSTRAP is not set" in result.stderr
    assert "meterwatch dev" in result.stderr


def test_the_startup_timeout_bounds_the_wait_for_a_broker_that_never_answers() -> None:
    # A socket that accepts connections and never speaks Kafka: only the timeout ends the wait.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = run_meterwatch(
            "worker", env={"METERWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "METERWATCH_STARTUP_TIMEOUT": "3s"}
        )
        waited = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert waited < 20, f"waited {waited:.0f}s for a 3s start-up timeout"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"METERWATCH_AUTH_SECRET": ""}, "no key to check tokens with: set METERWATCH_AUTH_SECRET"),
        ({"METERWATCH_AUTH_SECRET": "too-short"}, "METERWATCH_AUTH_SECRET: must be at least 32 bytes"),
        ({"METERWATCH_AUTH": "maybe"}, "METERWATCH_AUTH"),
        ({"METERWATCH_AUTH_JWKS": "/nonexistent/keys.json"}, "METERWATCH_AUTH_JWKS: no such file"),
    ],
)
def test_a_worker_without_a_usable_key_refuses_to_start(env: dict[str, str], says: str) -> None:
    # The broker is never asked: the refusal comes first, in one line, with exit code 2.
    result = run_meterwatch("worker", env={"METERWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}", **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert "too-short" not in result.stderr


def test_a_worker_with_authentication_off_starts_and_says_so_only_when_asked() -> None:
    # METERWATCH_AUTH=off passes the key check: the next thing the worker needs is a broker.
    result = run_meterwatch(
        "worker",
        env={
            "METERWATCH_AUTH": "off",
            "METERWATCH_AUTH_SECRET": "",
            "METERWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",
            "METERWATCH_STARTUP_TIMEOUT": "1s",
        },
    )
    assert result.returncode == 2
    assert "no Kafka broker answers" in result.stderr.strip().splitlines()[-1]


def test_token_prints_a_token_the_workers_accept_for_what_it_names() -> None:
    from datetime import UTC, datetime

    from meterwatch.tokens import Keys

    result = run_meterwatch(
        "token", "--workspace", "ws_a", "--workspace", "ws_b", "--metric", "sms", "--billing", "--ttl", "2h", env={}
    )
    assert result.returncode == 0, result.stderr
    grant = Keys.load(SECRET, None).verify(result.stdout.strip(), datetime.now(UTC))
    assert grant.workspaces == {"ws_a", "ws_b"} and grant.metrics == {"sms"} and grant.billing and not grant.service
    assert 7190 <= grant.expires - datetime.now(UTC).timestamp() <= 7200

    service = run_meterwatch("token", "--service", env={})
    assert service.returncode == 0, service.stderr
    assert Keys.load(SECRET, None).verify(service.stdout.strip(), datetime.now(UTC)).service


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--workspace", "ws_a"], {"METERWATCH_AUTH_SECRET": ""}, "METERWATCH_AUTH_SECRET is not set"),
        (["--workspace", "ws_a", "--ttl", "soon"], {}, "--ttl"),
        (["--workspace", "ws_a", "--metric", "tweets"], {}, "unknown metric 'tweets'"),
        (["--service", "--billing"], {}, "--service reads everything"),
    ],
)
def test_token_refuses_what_it_cannot_sign_in_one_line(args: list[str], env: dict[str, str], says: str) -> None:
    result = run_meterwatch("token", *args, env=env)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


def test_acls_prints_one_kafka_acls_command_per_grant_a_worker_needs() -> None:
    result = run_meterwatch(
        "acls",
        "--principal",
        "User:metering",
        env={"METERWATCH_TOPIC_PREFIX": "eu.", "METERWATCH_APP_ID": "billing", "METERWATCH_KAFKA_BOOTSTRAP": "k1:9093"},
    )
    assert result.returncode == 0, result.stderr
    commands = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    grants = {}
    for line in commands:
        words = line.split()
        assert words[:5] == ["kafka-acls.sh", "--bootstrap-server", "k1:9093", "--add", "--allow-principal"]
        assert words[5] == "User:metering"
        operations = tuple(words[i + 1] for i, w in enumerate(words) if w == "--operation")
        rest = [w for i, w in enumerate(words[6:], 6) if w != "--operation" and words[i - 1] != "--operation"]
        grants[" ".join(rest)] = operations
    assert grants == {
        "--topic eu.usage.events": ("Read", "Describe", "Create"),
        "--topic eu.usage.control": ("Read", "Write", "Describe", "Create"),
        "--topic eu.usage.alerts": ("Write", "Describe", "Create"),
        "--topic eu.usage.limits": ("Write", "Describe", "Create"),
        "--topic eu.usage.notifications": ("Write", "Describe", "Create"),
        "--topic eu.usage.dead-letter": ("Write", "Describe", "Create"),
        "--topic eu.usage.command-results": ("Read", "Write", "Describe", "Create"),
        "--topic eu.billing- --resource-pattern-type prefixed": (
            "Read",
            "Write",
            "Describe",
            "Create",
            "DescribeConfigs",
        ),
        "--group eu.billing --resource-pattern-type prefixed": ("Read", "Describe"),
        "--transactional-id eu.billing --resource-pattern-type prefixed": ("Write", "Describe"),
        "--cluster": ("IdempotentWrite", "Describe"),
    }
