"""The ``meterwatch`` command as a person runs it: bad configuration is one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest


def run_meterwatch(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")}
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
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(env: dict[str, str], names: str) -> None:
    result = run_meterwatch("worker", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr


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
