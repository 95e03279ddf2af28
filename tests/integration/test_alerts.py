"""Usage alerts end to end: settings answered on command-results, levels on usage.alerts
(CONTRACT 3.2, 3.3, 5.1, 5.5; the help article's "Setting usage alerts")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from tests.support.kafka_io import produce, read_all
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get

ADMIN = {"id": "u1", "billing_permission": True}


def alert_settings(workspace: str, metric: str, threshold: int, *, early: bool = True, enabled: bool = True) -> dict:
    return {
        "type": "alert_settings",
        "command_id": f"cmd-{uuid.uuid4().hex[:8]}",
        "issued_at": datetime.now(UTC).isoformat(),
        "workspace_id": workspace,
        "actor": ADMIN,
        "metric": metric,
        "threshold": threshold,
        "early_warnings": early,
        "enabled": enabled,
    }


class Deployment:
    def __init__(self, worker: WorkerProcess, env: dict[str, str]) -> None:
        self.worker = worker
        self.bootstrap = env["METERWATCH_KAFKA_BOOTSTRAP"]
        self.prefix = env["METERWATCH_TOPIC_PREFIX"]

    async def command(self, key: str, command: dict) -> dict:
        await produce(self.bootstrap, self.prefix + "usage.control", [(key.encode(), command)])
        results = await eventually(lambda: self._result_of(command["command_id"]), timeout=30)
        return results

    async def _result_of(self, command_id: str) -> dict | None:
        results = await read_all(self.bootstrap, self.prefix + "usage.command-results", timeout=3)
        matching = [r for r in results if r["command_id"] == command_id]
        assert len(matching) <= 1, matching
        return matching[0] if matching else None

    async def use(self, workspace: str, metric: str, *quantities: int) -> None:
        for quantity in quantities:  # one at a time, so each is judged on its own
            await produce(
                self.bootstrap, self.prefix + "usage.events", [(workspace.encode(), event(workspace, metric, quantity))]
            )

    async def usage(self, workspace: str, metric: str, expected: int) -> dict:
        def settled() -> dict | None:
            status, body = http_get(f"{self.worker.base_url}/usage/{workspace}")
            entry = body["metrics"].get(metric) if status == 200 else None
            return entry if entry and entry["usage"] == expected else None

        return await eventually(settled, timeout=30)

    async def alerts(self, workspace: str, expect: int) -> list[dict]:
        """The workspace's alerts, once ``expect`` have arrived (and after a pause for any extra)."""

        async def arrived() -> list[dict] | None:
            records = await read_all(self.bootstrap, self.prefix + "usage.alerts", timeout=2)
            mine = [r for r in records if r["workspace_id"] == workspace]
            return mine if len(mine) >= expect else None

        return await eventually(arrived, timeout=20) if expect else await self._none_for(workspace)

    async def _none_for(self, workspace: str) -> list[dict]:
        records = await read_all(self.bootstrap, self.prefix + "usage.alerts", timeout=3)
        return [r for r in records if r["workspace_id"] == workspace]


async def test_levels_alert_once_each_and_a_jump_only_the_highest(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    d = Deployment(running_worker, deployment)
    result = await d.command("ws_lv", alert_settings("ws_lv", "sms", 1000))
    assert result["status"] == "applied"
    await d.use("ws_lv", "sms", 499, 1, 1, 299, 200, 500)
    await d.usage("ws_lv", "sms", 1500)
    alerts = await d.alerts("ws_lv", 3)
    assert [(a["level"], a["usage"]) for a in alerts] == [(50, 500), (80, 800), (100, 1000)]
    assert len({a["alert_id"] for a in alerts}) == 3
    first = alerts[0]
    assert first["scope"] == "workspace" and first["metric"] == "sms" and first["threshold"] == 1000
    assert first["recipients"] == [] and first["estimated_cost"] is None
    assert first["period_start"].startswith(datetime.now(UTC).strftime("%Y-%m"))

    # A jump over several levels of a fresh threshold alerts only the highest.
    await d.command("ws_jump", alert_settings("ws_jump", "email", 100))
    await d.use("ws_jump", "email", 10, 200)
    await d.usage("ws_jump", "email", 210)
    assert [a["level"] for a in await d.alerts("ws_jump", 1)] == [100]


async def test_lowering_below_usage_is_scheduled_raising_applies_and_off_is_silent(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    d = Deployment(running_worker, deployment)
    await d.command("ws_sch", alert_settings("ws_sch", "whatsapp", 100, early=False))
    await d.use("ws_sch", "whatsapp", 60)
    await d.usage("ws_sch", "whatsapp", 60)

    lowered = await d.command("ws_sch", alert_settings("ws_sch", "whatsapp", 50, early=False))
    assert lowered["status"] == "scheduled"
    body = await d.usage("ws_sch", "whatsapp", 60)
    in_force = body["alert"]
    assert {k: in_force[k] for k in ("threshold", "early_warnings", "enabled", "changed_by")} == {
        "threshold": 100,
        "early_warnings": False,
        "enabled": True,
        "changed_by": ADMIN["id"],
    }
    # Who changed what and when: each setting keeps its own actor and time of receipt.
    assert in_force["changed_at"] < body["scheduled_alert"]["changed_at"]
    assert body["scheduled_alert"]["changed_by"] == ADMIN["id"]
    assert body["scheduled_alert"]["threshold"] == 50
    assert body["scheduled_alert"]["effective_from"] == lowered["effective_from"]
    status, whole = http_get(f"{running_worker.base_url}/usage/ws_sch")
    assert lowered["effective_from"] == whole["period_end"]

    # The previous threshold stays in force until then, and still alerts.
    await d.use("ws_sch", "whatsapp", 40)
    await d.usage("ws_sch", "whatsapp", 100)
    assert [(a["level"], a["threshold"]) for a in await d.alerts("ws_sch", 1)] == [(100, 100)]

    raised = await d.command("ws_sch", alert_settings("ws_sch", "whatsapp", 150, early=False))
    assert raised["status"] == "applied"
    body = await d.usage("ws_sch", "whatsapp", 100)
    assert body["alert"]["threshold"] == 150 and body["scheduled_alert"] is None
    await d.use("ws_sch", "whatsapp", 50)
    await d.usage("ws_sch", "whatsapp", 150)
    assert [(a["level"], a["threshold"]) for a in await d.alerts("ws_sch", 2)] == [(100, 100), (100, 150)]

    off = await d.command("ws_sch", alert_settings("ws_sch", "whatsapp", 1000, enabled=False))
    assert off["status"] == "applied"
    await d.use("ws_sch", "whatsapp", 2000)
    await d.usage("ws_sch", "whatsapp", 2150)
    assert len(await d.alerts("ws_sch", 2)) == 2


async def test_settings_are_checked(running_worker: WorkerProcess, deployment: dict[str, str]) -> None:
    d = Deployment(running_worker, deployment)
    on_seats = await d.command("ws_chk", alert_settings("ws_chk", "seats", 10))
    assert on_seats["status"] == "rejected" and on_seats["reason"].startswith("alerts_not_available_on_seats")
    no_permission = alert_settings("ws_chk", "sms", 10)
    no_permission["actor"] = {"id": "u2", "billing_permission": False}
    refused = await d.command("ws_chk", no_permission)
    assert refused["status"] == "rejected" and refused["reason"].startswith("no_billing_permission")
    zero = await d.command("ws_chk", alert_settings("ws_chk", "sms", 0))
    assert zero["status"] == "rejected"


async def test_alert_cost_is_the_price_of_the_threshold_above_what_the_contract_includes(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    d = Deployment(running_worker, deployment)
    subscription = {
        "type": "subscription",
        "command_id": "sub-cost",
        "issued_at": datetime.now(UTC).isoformat(),
        "contract_id": "c_cost",
        "workspace_ids": ["ws_cost"],
        "billing_anchor": "2026-01-01",
        "timezone": "UTC",
        "currency": "USD",
        "prices": {"fin_resolutions": {"unit_price": "0.99", "included": 300}, "sms": {"unit_price": "0.0125"}},
    }
    await d.command("c_cost", subscription)
    await eventually(
        lambda: (http_get(f"{running_worker.base_url}/usage/ws_cost")[1] or {}).get("contract_id") == "c_cost"
    )
    await d.command("ws_cost", alert_settings("ws_cost", "sms", 1000, early=False))
    await d.use("ws_cost", "sms", 1000)
    await d.usage("ws_cost", "sms", 1000)
    [alert] = await d.alerts("ws_cost", 1)
    assert alert["contract_id"] == "c_cost"
    assert alert["estimated_cost"] == {"amount": "12.50", "currency": "USD"}  # 1000 × 0.0125, pay-as-you-go


async def test_usage_shows_where_the_period_is_heading_and_when_each_level_is_reached(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    d = Deployment(running_worker, deployment)
    today = datetime.now(UTC).date()
    first = today - timedelta(days=3)  # the period began three days ago: three complete days
    subscription = {
        "type": "subscription",
        "command_id": "sub-forecast",
        "issued_at": datetime.now(UTC).isoformat(),
        "contract_id": "c_forecast",
        "workspace_ids": ["ws_fc"],
        "billing_anchor": first.isoformat(),
        "timezone": "UTC",
        "currency": "USD",
        "prices": {"sms": {"unit_price": "0.01"}},
    }
    await d.command("c_forecast", subscription)
    await eventually(lambda: (http_get(f"{running_worker.base_url}/usage/ws_fc")[1] or {}).get("contract_id"))
    await d.command("ws_fc", alert_settings("ws_fc", "sms", 5000))
    noon = [datetime.combine(first + timedelta(days=n), time(12), UTC) for n in range(3)]
    sent = [event("ws_fc", "sms", q, at=at) for q, at in zip((120, 90, 150), noon, strict=True)]
    await produce(d.bootstrap, d.prefix + "usage.events", [(b"ws_fc", e) for e in [*sent, event("ws_fc", "sms", 40)]])
    await d.usage("ws_fc", "sms", 400)

    before = datetime.now(UTC)
    status, body = http_get(f"{running_worker.base_url}/usage/ws_fc")
    after = datetime.now(UTC)
    assert status == 200
    forecast = body["metrics"]["sms"]["forecast"]
    period_end = datetime.fromisoformat(body["period_end"])

    def projected(at: datetime) -> int:  # (120 + 90 + 150) / 3 = 120 a day for the time left
        return 400 + int(Decimal(120) * Decimal((period_end - at).total_seconds()) / Decimal(86400))

    assert forecast["method"] == "trailing_average"
    assert (forecast["per_day"], forecast["basis_days"]) == ("120.00", 3)
    assert projected(after) <= forecast["usage"] <= projected(before)
    assert forecast["estimated_cost"] == {"amount": f"{Decimal(forecast['usage']) / 100:.2f}", "currency": "USD"}
    # 50 % of 5,000 is 2,100 more: 17.5 days at 120 a day; 80 % (3,600 more, 30 days) and 100 %
    # are beyond the period's end.
    half, most, full = forecast["levels"]
    assert (half["percent"], half["usage"], half["reached"]) == (50, 2500, False)
    assert half["projected_date"] in {(at + timedelta(days=17.5)).date().isoformat() for at in (before, after)}
    assert (most["usage"], most["projected_date"], full["usage"], full["projected_date"]) == (4000, None, 5000, None)
