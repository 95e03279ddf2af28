"""What an SRE reads in the worker's log: one JSON line per notable event, no secrets, no mail."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from tests.support.kafka_io import produce
from tests.support.worker import WorkerProcess, eventually, http_get


def json_lines(path: Path) -> list[dict]:
    lines = []
    for raw in path.read_bytes().splitlines():
        if raw.startswith(b"{"):
            lines.append(orjson.loads(raw))
    return lines


def messages(path: Path) -> list[str]:
    return [line["message"] for line in json_lines(path)]


async def test_start_rebalance_and_recovery_each_log_one_json_line(deployment: dict[str, str], tmp_path: Path) -> None:
    deployment |= {
        "METERWATCH_LOG_FORMAT": "json",
        "METERWATCH_SMTP_PASSWORD": "s3cret-never-logged",
        "METERWATCH_SMTP_STARTTLS": "true",  # a password is refused without TLS
    }
    log_path = tmp_path / "worker.log"
    worker = WorkerProcess(env=deployment, log_path=log_path, web_port=int(deployment["METERWATCH_WEB_PORT"]))
    worker.start()
    try:
        worker.wait_healthy()
        workspace = f"ws_log_{uuid.uuid4().hex[:6]}"
        now = datetime.now(UTC).isoformat()
        events = [
            {
                "event_id": uuid.uuid4().hex,
                "workspace_id": workspace,
                "metric": "sms",
                "quantity": 1,
                "occurred_at": now,
            }
            for _ in range(50)
        ]
        await produce(
            deployment["METERWATCH_KAFKA_BOOTSTRAP"],
            deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events",
            [(workspace.encode(), e) for e in events],
        )
        usage_url = f"{worker.base_url}/usage/{workspace}"
        await eventually(
            lambda: http_get(usage_url)[1].get("metrics", {}).get("sms", {}).get("usage") == 50, timeout=60
        )
        worker.stop()
        # A second start has table changelogs to restore from.
        worker.start()
        worker.wait_healthy()
        assert http_get(usage_url)[1]["metrics"]["sms"]["usage"] == 50
    finally:
        worker.stop()

    logged = messages(log_path)
    starts = [m for m in logged if m.startswith("starting worker:")]
    assert len(starts) == 2, logged
    assert any(m.startswith("rebalance: assigned ") and "usage.events[" in m for m in logged), logged
    rebalances_done = [m for m in logged if m.startswith("rebalance #") and "tables ready on" in m]
    assert len(rebalances_done) >= 2, logged  # at least once per start
    assert not any("Starting..." in m or "Stopping..." in m for m in logged), logged
    text = log_path.read_text(errors="replace")
    assert "s3cret-never-logged" not in text
    assert all(line["level"] in {"debug", "info", "warning", "error", "critical"} for line in json_lines(log_path))
