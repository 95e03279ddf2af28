"""Cost alerts on a real worker and broker: set over HTTP, judged at the events that raise the
workspace's estimated cost, published on usage.alerts and mailed (CONTRACT 3.4)."""

from __future__ import annotations

import time
from datetime import datetime
from decimal import Decimal

from meterwatch.core.cost_alerts import cost_alert_id

from tests.support.kafka_io import apply_commands, produce, read_all
from tests.support.messages import bare_command, command, event
from tests.support.smtp import SmtpServer
from tests.support.worker import WorkerProcess, eventually, http_get, http_put, token_for

WS = "ws_cost"
CONTACT = "billing@cost.example.com"


async def test_a_total_cost_alert_set_over_http_alerts_each_level_once_with_its_event_and_mails_it(
    mailing_worker: WorkerProcess, smtp_server: SmtpServer, deployment: dict[str, str]
) -> None:
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    subscription = bare_command(
        "subscription",
        contract_id="c_cost",
        workspace_ids=[WS],
        billing_anchor="2026-01-01",
        timezone="UTC",
        currency="EUR",
        prices={"sms": {"unit_price": "0.05", "included": None}, "email": {"unit_price": "0.01", "included": None}},
    )
    await produce(bootstrap, prefix + "usage.control", [(b"c_cost", subscription)])
    base = mailing_worker.base_url
    await eventually(lambda: (http_get(f"{base}/usage/{WS}")[1] or {}).get("contract_id") == "c_cost", timeout=30)
    await apply_commands(deployment, [command("billing_contacts", WS, emails=[CONTACT])], applied=True)

    billing = token_for(WS, billing=True, subject="alice@example.com")
    url = f"{base}/usage/{WS}/settings/cost-alerts"
    status, answer = http_put(f"{url}/total", {"amount": "10.00"}, billing)
    assert (status, answer["status"]) == (200, "applied"), answer
    status, answer = http_put(f"{url}/sms", {"amount": "5", "currency": "USD"}, billing)
    assert status == 422 and answer["reason"].startswith("currency_mismatch:"), answer
    status, answer = http_put(f"{url}/whatsapp", {"amount": "5"}, billing)
    assert status == 422 and answer["reason"].startswith("metric_not_priced:"), answer
    status, answer = http_put(f"{url}/seats", {"amount": "5"}, billing)
    assert status == 400 and answer["reason"].startswith("alerts_not_available_on_seats:"), answer
    status, answer = http_put(f"{url}/total", {"amount": 10.0}, billing)
    assert status == 400 and answer["reason"].startswith("invalid_command:"), answer
    status, _ = http_put(f"{url}/total", {"amount": "10.00"}, token_for(WS, billing=False))
    assert status == 403

    # 100 SMS: 5.00 EUR (50%); 310 emails: 8.10 (80%); 40 SMS: 10.10 (100%); 1 more SMS: nothing.
    events = [event(WS, "sms", 100), event(WS, "email", 310), event(WS, "sms", 40), event(WS, "sms", 1)]
    for one in events:
        await produce(bootstrap, prefix + "usage.events", [(WS.encode(), one)])
    alerts = await read_all(bootstrap, prefix + "usage.alerts", expect=3)
    time.sleep(2)  # anything extra would arrive now
    alerts = await read_all(bootstrap, prefix + "usage.alerts", timeout=3)
    assert [(a["kind"], a["metric"], a["level"]) for a in alerts] == [("cost", "total", n) for n in (50, 80, 100)]
    assert [a["cause_event_id"] for a in alerts] == [e["event_id"] for e in events[:3]]
    assert [a["estimated_cost"] for a in alerts] == [
        {"amount": amount, "currency": "EUR"} for amount in ("5.00", "8.10", "10.10")
    ]
    period_start = datetime.fromisoformat(alerts[0]["period_start"])
    for alert in alerts:
        assert alert["cost_threshold"] == {"amount": "10.00", "currency": "EUR"}
        assert (alert["workspace_id"], alert["contract_id"], alert["threshold"], alert["usage"]) == (
            WS,
            "c_cost",
            None,
            None,
        )
        assert alert["alert_id"] == cost_alert_id(WS, "total", period_start, Decimal("10"), alert["level"])
        assert alert["recipients"] == [CONTACT]

    mails = await eventually(lambda: smtp_server.mails if len(smtp_server.mails) >= 3 else None, timeout=30)
    assert sorted(m.message["X-Meterwatch-Alert-Id"] for m in mails) == sorted(a["alert_id"] for a in alerts)
    assert all(m.recipients == [CONTACT] for m in mails)
    subjects = {m.message["Subject"] for m in mails}
    assert f"100% of your total cost alert (10.00 EUR) - workspace {WS}" in subjects, subjects

    status, settings = http_get(f"{base}/usage/{WS}/settings", token=billing)
    assert status == 200, settings
    total = settings["cost_alerts"]["total"]
    assert (total["amount"], total["currency"], total["enabled"], total["changed_by"]) == (
        "10.00",
        "EUR",
        True,
        "alice@example.com",
    )
    assert total["estimated_cost"] == {"amount": "10.15", "currency": "EUR"}

    # Lowered below the 10.15 EUR reached: from the next period on.
    status, answer = http_put(f"{url}/total", {"amount": "8"}, billing)
    assert (status, answer["status"]) == (200, "scheduled"), answer
    assert answer["effective_from"] == alerts[0]["period_end"]
