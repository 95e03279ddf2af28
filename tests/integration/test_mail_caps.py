"""The caps on mail, through a real worker, a real broker and a real SMTP server (aiosmtpd),
set small through the environment (CONTRACT 3.2, 5.4, 5.6).

A workspace cannot be given more billing contacts than allowed, and mail past its hourly cap is
held back: dead-lettered, counted and logged, never sent and never lost without a trace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import healthy_worker
from tests.integration.test_mail_retries import mailing_env, metric
from tests.support.kafka_io import apply_commands, produce, read_all
from tests.support.messages import command, event
from tests.support.smtp import SmtpServer
from tests.support.worker import WorkerProcess, eventually, http_get


@pytest.fixture
def capped_worker(deployment: dict[str, str], smtp_server: SmtpServer, tmp_path: Path) -> Iterator[WorkerProcess]:
    env = mailing_env(
        deployment,
        smtp_server,
        METERWATCH_MAX_BILLING_CONTACTS="2",
        METERWATCH_MAX_MAILS_PER_WORKSPACE_HOUR="4",
    )
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        yield worker


def clear_of_the_hour_boundary() -> None:
    """The three alerts below must fall in one hour of UTC."""
    now = datetime.now(UTC)
    if now.minute == 59 and now.second >= 20:
        time.sleep(61 - now.second)


async def test_contacts_and_mails_over_their_caps_are_refused_or_held_back_never_lost(
    capped_worker: WorkerProcess, smtp_server: SmtpServer, deployment: dict[str, str]
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    worker, ws = capped_worker, "ws-capped"
    too_many = command("billing_contacts", ws, emails=["a@example.com", "b@example.com", "c@example.com"])
    await apply_commands(
        deployment,
        [
            too_many,
            command("billing_contacts", ws, emails=["ana@example.com", "bo@example.com"]),
            command("alert_settings", ws, metric="sms", threshold=100, early_warnings=True, enabled=True),
        ],
    )
    results = {r["command_id"]: r for r in await read_all(bootstrap, prefix + "usage.command-results", expect=3)}
    assert results[too_many["command_id"]]["status"] == "rejected"
    assert results[too_many["command_id"]]["reason"] == "too_many_contacts: 3 billing contacts, at most 2"

    # 50, 80 and 100% in one hour, each to two contacts: 6 mails against a cap of 4.
    clear_of_the_hour_boundary()
    for quantity in (50, 30, 20):
        await produce(bootstrap, prefix + "usage.events", [(ws.encode(), event(ws, "sms", quantity))])
    alerts = {a["level"]: a for a in await read_all(bootstrap, prefix + "usage.alerts", expect=3)}
    assert sorted(alerts) == [50, 80, 100]  # every alert is published, whatever happens to its mail

    [letter] = await read_all(bootstrap, prefix + "usage.dead-letter", expect=1, timeout=30)
    assert letter["error"]["code"] == "mail_rate_limited"
    assert alerts[100]["alert_id"] in letter["error"]["message"]
    assert "2 mail(s) would pass the cap of 4 mails per workspace in the hour" in letter["error"]["message"]
    assert letter["source_topic"] == f"{prefix}{deployment['METERWATCH_APP_ID']}-mail-requests"
    assert letter["key"] == alerts[100]["alert_id"]
    await eventually(lambda: metric(worker, "meterwatch_emails_held_back_total") == 2, timeout=10)
    assert "held back (2 mail(s))" in worker.log_path.read_text(errors="replace")

    await eventually(lambda: len(smtp_server.mails) >= 4 or None, timeout=30)
    await asyncio.sleep(2)  # a held-back mail would arrive now
    mailed = sorted((m.message["X-Meterwatch-Alert-Id"], m.recipients[0]) for m in smtp_server.mails)
    assert mailed == sorted(
        (alerts[level]["alert_id"], contact) for level in (50, 80) for contact in ("ana@example.com", "bo@example.com")
    )
    assert metric(worker, "meterwatch_emails_sent_total") == 4
    # No metric carries a workspace id.
    _, text = http_get(f"{worker.base_url}/metrics")
    assert ws not in (text or "")
