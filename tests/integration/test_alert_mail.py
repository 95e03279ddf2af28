"""Alert and Fin mails through a real SMTP server, and an SMTP outage under alert traffic
(CONTRACT 4, 5.6)."""

from __future__ import annotations

import time
from collections import Counter
from email.utils import getaddresses

from tests.support.kafka_io import apply_commands, produce, read_all
from tests.support.messages import command, event
from tests.support.smtp import SmtpServer
from tests.support.worker import WorkerProcess, eventually, http_get


async def test_each_alert_and_fin_disable_mails_each_contact_once_in_a_mail_of_its_own(
    mailing_worker: WorkerProcess, smtp_server: SmtpServer, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    ws = "ws_mail"
    contacts = ["ana@example.com", "bo@example.com"]
    await apply_commands(
        deployment,
        [
            command("billing_contacts", ws, emails=["ana@example.com", "bo@example.com", "ana@example.com"]),
            command("alert_settings", ws, metric="sms", threshold=100, early_warnings=True, enabled=True),
            command("limit_settings", ws, metric="fin_resolutions", limit=2, enabled=True),
        ],
    )
    for quantity in (50, 30, 20):
        await produce(bootstrap, prefix + "usage.events", [(ws.encode(), event(ws, "sms", quantity))])
    await produce(
        bootstrap, prefix + "usage.events", [(ws.encode(), event(ws, "fin_resolutions", 1, f"c{i}")) for i in range(2)]
    )

    # 3 alerts (50, 80, 100%) and 1 Fin transition, each to 2 contacts: 8 mails.
    mails = await eventually(lambda: smtp_server.mails if len(smtp_server.mails) >= 8 else None, timeout=30)
    time.sleep(2)  # anything extra would arrive now
    mails = smtp_server.mails
    assert len(mails) == 8
    alerts = await read_all(bootstrap, prefix + "usage.alerts", expect=3)
    [transition] = await read_all(bootstrap, prefix + "usage.limits", expect=1)

    # Every contact gets its own mail, addressed to it alone: no contact sees another's address.
    for mail in mails:
        [to] = mail.recipients
        assert [address for _, address in getaddresses(mail.message.get_all("To", []))] == [to]
        assert mail.message["Cc"] is None and mail.message["Bcc"] is None
        others = [c for c in contacts if c != to]
        assert not any(other in mail.message.as_string() for other in others)
    record_of = [m.message["X-Meterwatch-Alert-Id"] or m.message["X-Meterwatch-Transition-Id"] for m in mails]
    ids = [a["alert_id"] for a in alerts] + [transition["transition_id"]]
    expected = [(record_id, contact) for record_id in ids for contact in contacts]
    assert sorted(zip(record_of, (m.recipients[0] for m in mails), strict=True)) == sorted(expected)
    assert len({m.message["Message-ID"] for m in mails}) == 8  # one per record and contact

    subjects = sorted(m.message["Subject"] for m in mails)
    assert any("80%" in s for s in subjects) and any("SMS" in s for s in subjects)
    body = next(m for m in mails if m.message["X-Meterwatch-Alert-Id"]).message.get_content()
    assert "100" in body


async def test_smtp_outage_does_not_slow_counting_and_every_alert_is_mailed_once(
    mailing_worker: WorkerProcess, smtp_server: SmtpServer, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    workspaces = [f"ws-out-{i}" for i in range(5)]
    for ws in workspaces:
        await apply_commands(
            deployment,
            [
                command("billing_contacts", ws, emails=[f"billing@{ws}.example.com"]),
                command("alert_settings", ws, metric="email", threshold=500, early_warnings=True, enabled=True),
            ],
        )
    smtp_server.stop()  # the outage begins
    expected: Counter[str] = Counter()
    messages = []
    for i in range(3000):
        ws = workspaces[i % len(workspaces)]
        expected[ws] += 1
        messages.append((ws.encode(), event(ws, "email", 1)))
    await produce(bootstrap, prefix + "usage.events", messages)

    def all_counted() -> bool:
        for ws in workspaces:
            status, body = http_get(f"{mailing_worker.base_url}/usage/{ws}")
            if status != 200 or body["metrics"].get("email", {}).get("usage") != expected[ws]:
                return False
        return True

    # Counting goes on while mail cannot be sent.
    await eventually(all_counted, timeout=30)
    alerts = await read_all(bootstrap, prefix + "usage.alerts", expect=15)
    assert len(alerts) == 15  # 50, 80 and 100% of 500 for each of 5 workspaces (each reached 600)
    smtp_server.start()  # the outage ends, on the same port
    try:
        await eventually(lambda: smtp_server.mails if len(smtp_server.mails) >= len(alerts) else None, timeout=90)
    except AssertionError:
        raise AssertionError(
            f"{len(smtp_server.mails)} mails of {len(alerts)}\n{mailing_worker.log_tail(30)}"
        ) from None
    time.sleep(3)
    mails = smtp_server.mails
    assert Counter(m.message["X-Meterwatch-Alert-Id"] for m in mails) == Counter(a["alert_id"] for a in alerts)
