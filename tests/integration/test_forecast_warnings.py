"""Forecast warnings end to end (CONTRACT 3.2, 3.3, 5.1, *Addition: forecast warnings*): a
setting with ``forecast_warnings`` on judges the forecast at once, and the level the pace of the
period's complete days projects is published once on usage.alerts as ``kind: forecast``."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from tests.integration.test_alerts import Deployment, alert_settings
from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get, http_put, token_for

FAST, SLOW = "ws_fw_fast", "ws_fw_slow"


async def test_a_pace_projected_past_a_level_warns_once_and_a_slow_one_not_at_all(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    d = Deployment(running_worker, deployment)
    first = datetime.now(UTC).date() - timedelta(days=3)  # the period began three days ago
    subscription = {
        "type": "subscription",
        "command_id": "sub-fw",
        "issued_at": datetime.now(UTC).isoformat(),
        "contract_id": "c_fw",
        "workspace_ids": [FAST, SLOW],
        "billing_anchor": first.isoformat(),
        "timezone": "UTC",
        "currency": "USD",
        "prices": {},
    }
    await d.command("c_fw", subscription)
    noon = [datetime.combine(first + timedelta(days=n), time(12), UTC) for n in range(3)]
    for workspace, per_day in ((FAST, 100), (SLOW, 10)):
        await eventually(
            lambda w=workspace: (http_get(f"{running_worker.base_url}/usage/{w}")[1] or {}).get("contract_id")
        )
        sent = [event(workspace, "sms", per_day, at=at) for at in noon]
        await produce(d.bootstrap, d.prefix + "usage.events", [(workspace.encode(), e) for e in sent])
        await d.usage(workspace, "sms", 3 * per_day)

    # 100 a day with 24 to 28 days left projects 2,700 to 3,100: past 80 % of 3,300 (2,640),
    # short of 100 %; 50 % (1,650) is not reached yet and only the highest level projected warns.
    before = datetime.now(UTC)
    result = await d.command(FAST, {**alert_settings(FAST, "sms", 3300), "forecast_warnings": True})
    after = datetime.now(UTC)
    assert result["status"] == "applied"
    # 10 a day projects at most 310: short of every level. Set over HTTP, through the PUT body.
    owner = token_for(SLOW, billing=True, subject="owner@example.com")
    url = f"{running_worker.base_url}/usage/{SLOW}/settings/alerts/sms"
    status, answer = http_put(url, {"threshold": 3300, "early_warnings": True, "forecast_warnings": True}, owner)
    assert (status, answer["status"]) == (200, "applied"), answer

    [warning] = await d.alerts(FAST, 1)
    assert warning["kind"] == "forecast"
    assert (warning["level"], warning["threshold"], warning["usage"]) == (80, 3300, 300)
    assert warning["method"] == "trailing_average" and warning["cause_event_id"] is None
    period_end = datetime.fromisoformat(warning["period_end"])
    days_left = [(period_end - at).total_seconds() / 86400 for at in (after, before)]
    assert 300 + int(100 * days_left[0]) <= warning["projected_usage"] <= 300 + int(100 * days_left[1])
    # 2,340 more at 100 a day: 23.4 days from the judgement.
    assert warning["projected_date"] in {(at + timedelta(days=23.4)).date().isoformat() for at in (before, after)}
    assert warning["contract_id"] == "c_fw" and warning["scope"] == "workspace"

    # Once per level and period: the same setting again judges again and warns of nothing new.
    await d.command(FAST, {**alert_settings(FAST, "sms", 3300), "forecast_warnings": True})
    assert len(await d.alerts(FAST, 0)) == 1
    assert await d.alerts(SLOW, 0) == []

    status, settings = http_get(f"{running_worker.base_url}/usage/{SLOW}/settings", token=owner)
    assert status == 200 and settings["alerts"]["sms"]["forecast_warnings"] is True
