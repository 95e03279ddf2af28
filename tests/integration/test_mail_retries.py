"""Mail that keeps failing for now, through real worker processes, a real broker and a real SMTP
server (aiosmtpd) that answers 4xx to chosen recipients (CONTRACT 4, 5.4, 5.6).

A mail deferred for ever holds up no other, not even the mail of the same alert to another
billing contact; it is given up at ``METERWATCH_MAIL_GIVE_UP_AFTER`` with a ``mail_given_up``
dead letter and a count, and never tried again, also after a restart;
a rebalance while mails are being retried, or while a slow server has not yet answered a mail
it took, sends none of them twice. SMTP credentials without TLS or STARTTLS stop the worker
before it starts.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import getaddresses
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import healthy_worker
from tests.support.kafka_io import apply_commands, produce, read_all
from tests.support.messages import command, event
from tests.support.smtp import DeferringRecorder, SlowReplyRecorder, SmtpServer
from tests.support.worker import WorkerProcess, eventually, free_port, http_get

PASSWORD = "s3cret-never-logged"
BODY_MARKER = "Usage this period"  # a line of every alert body: never in a dead letter


@pytest.fixture
def smtp_recorder() -> SlowReplyRecorder:
    """Overrides conftest's: ``smtp_server`` defers the addresses a test lists, and answers late
    for those it lists as slow."""
    return SlowReplyRecorder()


def mailing_env(deployment: dict[str, str], smtp_server: SmtpServer, **extra: str) -> dict[str, str]:
    return {
        **deployment,
        "METERWATCH_SMTP_HOST": "127.0.0.1",
        "METERWATCH_SMTP_PORT": str(smtp_server.port),
        "METERWATCH_SMTP_FROM": "meterwatch@billing.example.com",
        **extra,
    }


@pytest.fixture
def give_up_quickly_worker(
    deployment: dict[str, str], smtp_server: SmtpServer, tmp_path: Path
) -> Iterator[WorkerProcess]:
    env = mailing_env(deployment, smtp_server, METERWATCH_MAIL_GIVE_UP_AFTER="2s")
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        yield worker


async def alert_to(deployment: dict[str, str], workspace: str, contact: str) -> None:
    """Set ``contact`` as the workspace's billing contact and cross its 10-message threshold."""
    await alert_with_contacts(deployment, workspace, [contact])


async def alert_with_contacts(deployment: dict[str, str], workspace: str, contacts: list[str]) -> None:
    """Set ``contacts`` as the workspace's billing contacts and cross its 10-message threshold."""
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    await apply_commands(
        deployment,
        [
            command("billing_contacts", workspace, emails=contacts),
            command("alert_settings", workspace, metric="sms", threshold=10, early_warnings=False, enabled=True),
        ],
    )
    await produce(bootstrap, prefix + "usage.events", [(workspace.encode(), event(workspace, "sms", 10))])


def rebalances_begun(worker: WorkerProcess) -> int:
    lines = worker.log_path.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "rebalance #" in line and line.endswith(": started"))


def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    _, text = http_get(f"{worker.base_url}/metrics")
    return sum(
        sample.value
        for family in text_string_to_metric_families(text or "")
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


async def test_a_recipient_deferred_for_ever_holds_up_no_later_mail(
    mailing_worker: WorkerProcess, smtp_server: SmtpServer, smtp_recorder: DeferringRecorder, deployment: dict[str, str]
) -> None:
    smtp_recorder.deferred.add("stuck@example.com")
    await alert_to(deployment, "ws-stuck", "stuck@example.com")
    await eventually(lambda: smtp_recorder.attempts_for("stuck@example.com") >= 2, timeout=30)

    for n in range(3):
        await alert_to(deployment, f"ws-later-{n}", f"later-{n}@example.com")
    try:
        await eventually(lambda: len(smtp_server.mails) >= 3, timeout=30)
    except AssertionError:
        raise AssertionError(f"{len(smtp_server.mails)} of 3 later mails\n{mailing_worker.log_tail(30)}") from None

    assert sorted(m.recipients[0] for m in smtp_server.mails) == [f"later-{n}@example.com" for n in range(3)]
    # Still being retried, not given up (the default age is 24 hours). The server has the last
    # mail a moment before its sender has settled it (QUIT, then the ledger), so the backlog is
    # waited for: it comes down to the one stuck mail, never to none.
    await eventually(lambda: metric(mailing_worker, "meterwatch_mail_backlog") == 1, timeout=10)
    assert metric(mailing_worker, "meterwatch_emails_failed_total") == 0


async def test_a_mail_deferred_past_its_age_is_dead_lettered_counted_and_never_tried_again(
    give_up_quickly_worker: WorkerProcess,
    smtp_server: SmtpServer,
    smtp_recorder: DeferringRecorder,
    deployment: dict[str, str],
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    worker = give_up_quickly_worker
    smtp_recorder.deferred.add("stuck@example.com")
    await alert_to(deployment, "ws-stuck", "stuck@example.com")
    [alert] = await read_all(bootstrap, prefix + "usage.alerts", expect=1)

    [letter] = await read_all(bootstrap, prefix + "usage.dead-letter", expect=1, timeout=30)
    assert letter["error"]["code"] == "mail_given_up"
    assert alert["alert_id"] in letter["error"]["message"]
    assert "451 4.3.0" in letter["error"]["message"] and "stuck@example.com" not in letter["error"]["message"]
    assert letter["source_topic"] == f"{prefix}{deployment['METERWATCH_APP_ID']}-mail-requests"
    assert letter["key"] == alert["alert_id"] and letter["value"] and BODY_MARKER not in letter["value"]
    await eventually(lambda: metric(worker, "meterwatch_emails_failed_total", reason="given_up") == 1, timeout=10)
    assert metric(worker, "meterwatch_mail_backlog") == 0

    # Given up means settled: neither this worker nor the next start tries it again.
    tried = smtp_recorder.attempts_for("stuck@example.com")
    assert tried >= 2
    worker.stop()
    worker.start()
    worker.wait_healthy()
    await asyncio.sleep(3)
    assert smtp_recorder.attempts_for("stuck@example.com") == tried
    assert len(await read_all(bootstrap, prefix + "usage.dead-letter", timeout=2)) == 1
    assert smtp_server.mails == []


async def test_a_contact_deferred_for_ever_holds_up_no_other_contact_and_is_given_up_alone(
    give_up_quickly_worker: WorkerProcess,
    smtp_server: SmtpServer,
    smtp_recorder: DeferringRecorder,
    deployment: dict[str, str],
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    worker = give_up_quickly_worker
    smtp_recorder.deferred.add("stuck@example.com")
    await alert_with_contacts(deployment, "ws-two", ["ana@example.com", "stuck@example.com"])
    [alert] = await read_all(bootstrap, prefix + "usage.alerts", expect=1)

    # Ana's mail arrives while the other contact's is still being retried, addressed to her alone.
    [mail] = await eventually(lambda: smtp_server.mails or None, timeout=30)
    assert mail.recipients == ["ana@example.com"]
    assert [address for _, address in getaddresses(mail.message.get_all("To", []))] == ["ana@example.com"]
    assert "stuck@example.com" not in mail.message.as_string()
    assert mail.message["X-Meterwatch-Alert-Id"] == alert["alert_id"]
    assert smtp_recorder.attempts_for("ana@example.com") == 1

    # The deferred contact's mail alone is given up: one dead letter, one count.
    [letter] = await read_all(bootstrap, prefix + "usage.dead-letter", expect=1, timeout=30)
    assert letter["error"]["code"] == "mail_given_up"
    assert alert["alert_id"] in letter["error"]["message"] and "451 4.3.0" in letter["error"]["message"]
    assert "stuck@example.com" not in letter["error"]["message"] and BODY_MARKER not in letter["value"]
    await eventually(lambda: metric(worker, "meterwatch_emails_failed_total", reason="given_up") == 1, timeout=10)
    assert metric(worker, "meterwatch_emails_sent_total") == 1
    assert metric(worker, "meterwatch_mail_backlog") == 0

    # Both settled: after a restart the request is not mailed again to either contact.
    tried = smtp_recorder.attempts_for("stuck@example.com")
    worker.stop()
    smtp_recorder.deferred.clear()
    worker.start()
    worker.wait_healthy()
    await asyncio.sleep(3)
    assert smtp_recorder.attempts_for("stuck@example.com") == tried
    assert smtp_recorder.attempts_for("ana@example.com") == 1
    assert len(smtp_server.mails) == 1
    assert len(await read_all(bootstrap, prefix + "usage.dead-letter", timeout=2)) == 1


async def test_a_rebalance_while_mail_is_retried_sends_each_mail_once(
    deployment: dict[str, str], smtp_server: SmtpServer, smtp_recorder: DeferringRecorder, tmp_path: Path
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    contacts = {f"ws-held-{n}": f"held-{n}@example.com" for n in range(8)}
    smtp_recorder.deferred.update(contacts.values())
    env = mailing_env(deployment, smtp_server)
    with healthy_worker(env, tmp_path / "first.log") as first:
        for workspace, contact in contacts.items():
            await alert_to(deployment, workspace, contact)
        alerts = await read_all(bootstrap, prefix + "usage.alerts", expect=len(contacts))
        await eventually(lambda: metric(first, "meterwatch_email_retries_total") >= len(contacts), timeout=30)

        # A second worker joins the group: every partition is revoked and assigned again while
        # the first worker is retrying every mail.
        second_env = {**env, "METERWATCH_WEB_PORT": str(free_port()), "METERWATCH_DATA_DIR": str(tmp_path / "second")}
        with healthy_worker(second_env, tmp_path / "second.log") as second:
            try:
                await eventually(lambda: metric(second, "meterwatch_email_retries_total") > 0, timeout=30)
            except AssertionError:
                pass  # the second worker may own no partition holding a mail; no mail may be sent twice anyway
            smtp_recorder.deferred.clear()  # the recipients take mail again
            try:
                await eventually(lambda: len(smtp_server.mails) >= len(alerts), timeout=60)
            except AssertionError:
                raise AssertionError(
                    f"{len(smtp_server.mails)} of {len(alerts)} mails\n{first.log_tail(20)}\n{second.log_tail(20)}"
                ) from None
            time.sleep(3)  # a second copy would arrive now

    mailed = Counter(m.message["X-Meterwatch-Alert-Id"] for m in smtp_server.mails)
    assert mailed == Counter(a["alert_id"] for a in alerts)


async def test_a_rebalance_while_a_slow_server_has_not_answered_a_mail_sends_it_once(
    deployment: dict[str, str], smtp_server: SmtpServer, smtp_recorder: SlowReplyRecorder, tmp_path: Path
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    # The server takes the mail at once and answers 12 s later: long after the rebalance
    # below has begun, and within the time one SMTP transaction may take.
    smtp_recorder.slow.add("slow@example.com")
    smtp_recorder.reply_after = 12.0
    env = mailing_env(deployment, smtp_server)
    with healthy_worker(env, tmp_path / "first.log") as first:
        await alert_to(deployment, "ws-slow", "slow@example.com")
        [alert] = await read_all(bootstrap, prefix + "usage.alerts", expect=1)
        await eventually(lambda: len(smtp_server.mails) == 1, timeout=30)

        # A second worker joins the group while the first waits for the server's answer.
        second_env = {**env, "METERWATCH_WEB_PORT": str(free_port()), "METERWATCH_DATA_DIR": str(tmp_path / "second")}
        second = WorkerProcess(
            env=second_env, log_path=tmp_path / "second.log", web_port=int(second_env["METERWATCH_WEB_PORT"])
        )
        second.start()
        try:
            await eventually(lambda: rebalances_begun(first) >= 2, timeout=30)
            assert smtp_recorder.answered_at == [], "the rebalance began before the server answered"
            await eventually(lambda: len(smtp_recorder.answered_at) == 1, timeout=30)
            await asyncio.to_thread(second.wait_healthy)
            await asyncio.sleep(smtp_recorder.reply_after + 3)  # a second copy would be taken by now
        finally:
            second.stop()
            print(f"\n--- second worker log tail ---\n{second.log_tail(30)}")

    mailed = Counter(m.message["X-Meterwatch-Alert-Id"] for m in smtp_server.mails)
    assert mailed == Counter([alert["alert_id"]]), f"{mailed}\n{first.log_tail(30)}"
    assert "1 mail(s) not settled" not in first.log_path.read_text()


def test_smtp_credentials_without_tls_stop_the_worker_before_it_starts(deployment: dict[str, str]) -> None:
    env = {
        **deployment,
        "METERWATCH_SMTP_HOST": "127.0.0.1",
        "METERWATCH_SMTP_PORT": str(free_port()),
        "METERWATCH_SMTP_USERNAME": "meterwatch",
        "METERWATCH_SMTP_PASSWORD": PASSWORD,
    }
    result = subprocess.run(
        [sys.executable, "-m", "meterwatch", "worker"], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("meterwatch: configuration error: METERWATCH_SMTP_USERNAME/METERWATCH_SMTP_PASSWORD")
    assert "METERWATCH_SMTP_STARTTLS=true or METERWATCH_SMTP_TLS=true" in line and "in clear" in line
    assert PASSWORD not in result.stderr
