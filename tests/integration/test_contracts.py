"""Contracts: periods from the contract's anchor and time zone, usage summed over its workspaces,
estimated costs counting the included quantity once, alerts at the levels the contract chose and
never on seats (CONTRACT 1, 3.2, 3.3, 5.1, 6)."""

from __future__ import annotations

import asyncio
import calendar
import uuid
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from meterwatch.core.alerts import alert_id

from tests.support.kafka_io import produce, read_all
from tests.support.messages import ADMIN, bare_command, event
from tests.support.worker import WorkerProcess, eventually, http_get

ZONE = "America/New_York"


def expected_period(now: datetime, anchor_day: int, zone: str) -> tuple[datetime, datetime]:
    """An independent oracle: local midnight on the anchor day, clamped to the month's end."""
    tz = ZoneInfo(zone)
    local = now.astimezone(tz)

    def start_in(year: int, month: int) -> datetime:
        day = min(anchor_day, calendar.monthrange(year, month)[1])
        return datetime.combine(date(year, month, day), time(0), tz)

    def shift(year: int, month: int, by: int) -> tuple[int, int]:
        index = year * 12 + month - 1 + by
        return index // 12, index % 12 + 1

    year, month = local.year, local.month
    start = start_in(year, month)
    if start > local:
        year, month = shift(year, month, -1)
        start = start_in(year, month)
    end = start_in(*shift(year, month, 1))
    return start.astimezone(UTC), end.astimezone(UTC)


def subscription(contract: str, workspaces: list[str]) -> dict:
    return {
        "type": "subscription",
        "command_id": f"sub-{uuid.uuid4().hex[:6]}",
        "issued_at": datetime.now(UTC).isoformat(),
        "contract_id": contract,
        "workspace_ids": workspaces,
        "billing_anchor": "2026-01-31",
        "timezone": ZONE,
        "currency": "EUR",
        "prices": {
            "sms": {"unit_price": "0.05", "included": 100},
            "email": {"unit_price": "0.002", "included": None},
        },
    }


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def usage_of(worker: WorkerProcess, workspace: str) -> dict:
    """``GET /usage`` of ``workspace``, or ``{}`` while the worker does not know it (404)."""
    status, body = http_get(f"{worker.base_url}/usage/{workspace}")
    return body if status == 200 else {}


def contract_usage_seen_by(worker: WorkerProcess, workspace: str, metric: str = "sms") -> int | None:
    """The contract's usage of ``metric`` as the workspace's usage page shows it."""
    status, body = http_get(f"{worker.base_url}/usage/{workspace}")
    entry = body["metrics"].get(metric) if status == 200 else None
    return (entry.get("contract") or {}).get("usage") if entry else None


async def test_contract_on_the_31st_in_new_york(running_worker: WorkerProcess, deployment: dict[str, str]) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    command = subscription("c_ny", ["ws_ny_1", "ws_ny_2"])
    await produce(bootstrap, prefix + "usage.control", [(b"c_ny", command)])
    results = await read_all(bootstrap, prefix + "usage.command-results", expect=1)
    assert results == [{"command_id": command["command_id"], "status": "applied"}]

    await produce(
        bootstrap,
        prefix + "usage.events",
        [(b"ws_ny_1", event("ws_ny_1", "sms", 7)) for _ in range(10)]
        + [(b"ws_ny_2", event("ws_ny_2", "sms", 10)) for _ in range(5)]
        + [(b"ws_ny_1", event("ws_ny_1", "email", 1234))],
    )

    def contract_settled() -> dict | None:
        status, body = http_get(f"{running_worker.base_url}/usage/ws_ny_1")
        if status == 200 and (body["metrics"].get("sms") or {}).get("contract", {}).get("usage") == 120:
            return body
        return None

    body = await eventually(contract_settled, timeout=30)
    start, end = expected_period(datetime.now(UTC), 31, ZONE)
    assert body["contract_id"] == "c_ny"
    assert (parse(body["period_start"]), parse(body["period_end"])) == (start, end)
    sms = body["metrics"]["sms"]
    assert sms["usage"] == 70
    assert sms["contract"] == {"usage": 120, "included": 100}
    # 120 used across the contract, 100 included once: 20 over at 0.05.
    assert sms["estimated_cost"] == {"amount": "1.00", "currency": "EUR"}
    email = body["metrics"]["email"]
    assert email["contract"] is None  # pay-as-you-go
    assert email["estimated_cost"] == {"amount": "2.47", "currency": "EUR"}  # 1234 × 0.002 = 2.468

    status, other = http_get(f"{running_worker.base_url}/usage/ws_ny_2")
    assert status == 200
    assert other["metrics"]["sms"]["usage"] == 50
    assert other["metrics"]["sms"]["contract"] == {"usage": 120, "included": 100}
    assert other["metrics"]["sms"]["estimated_cost"]["amount"] == "1.00"

    status, daily = http_get(f"{running_worker.base_url}/usage/ws_ny_1/daily?metric=sms")
    assert status == 200
    assert daily["cumulative"] is True
    assert daily["days"][-1]["usage"] == 70
    assert daily["days"][0]["date"] == start.astimezone(ZoneInfo(ZONE)).date().isoformat()


async def test_a_workspace_that_leaves_the_contract_stops_counting_towards_it(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    await produce(bootstrap, prefix + "usage.control", [(b"c_move", subscription("c_move", ["ws_m1", "ws_m2"]))])
    await eventually(lambda: http_get(f"{running_worker.base_url}/usage/ws_m2")[0] == 200)
    await produce(
        bootstrap,
        prefix + "usage.events",
        [(b"ws_m1", event("ws_m1", "sms", 30)), (b"ws_m2", event("ws_m2", "sms", 40))],
    )

    await eventually(lambda: contract_usage_seen_by(running_worker, "ws_m1") == 70)
    # ws_m2 leaves the contract: the contract no longer counts it, and it is pay-as-you-go again.
    await produce(bootstrap, prefix + "usage.control", [(b"c_move", subscription("c_move", ["ws_m1"]))])
    await eventually(lambda: contract_usage_seen_by(running_worker, "ws_m1") == 30)
    await eventually(lambda: http_get(f"{running_worker.base_url}/usage/ws_m2")[1]["contract_id"] is None)


async def test_contract_alerts_at_80_and_100_percent_go_to_every_members_contacts(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    admin = {"id": "admin", "billing_permission": True}

    def contacts(workspace: str, emails: list[str]) -> dict:
        return {
            "type": "billing_contacts",
            "command_id": f"bc-{uuid.uuid4().hex[:6]}",
            "issued_at": datetime.now(UTC).isoformat(),
            "workspace_id": workspace,
            "actor": admin,
            "emails": emails,
        }

    await produce(bootstrap, prefix + "usage.control", [(b"c_al", subscription("c_al", ["ws_a1", "ws_a2"]))])
    await eventually(lambda: http_get(f"{running_worker.base_url}/usage/ws_a2")[0] == 200)
    await produce(
        bootstrap,
        prefix + "usage.control",
        [
            (b"ws_a1", contacts("ws_a1", ["fin@acme.example.com", "cfo@acme.example.com"])),
            (b"ws_a2", contacts("ws_a2", ["FIN@acme.example.com", "ops@acme.example.com"])),
        ],
    )
    await asyncio.sleep(2)  # the contacts reach the contract's owner before the usage does
    await produce(bootstrap, prefix + "usage.events", [(b"ws_a1", event("ws_a1", "sms", 50))])
    await produce(bootstrap, prefix + "usage.events", [(b"ws_a2", event("ws_a2", "sms", 35))])  # 85 of 100
    await eventually(lambda: contract_usage_seen_by(running_worker, "ws_a1") == 85)
    await produce(bootstrap, prefix + "usage.events", [(b"ws_a2", event("ws_a2", "sms", 20))])  # 105 of 100

    async def contract_alerts() -> list[dict] | None:
        records = [r for r in await read_all(bootstrap, prefix + "usage.alerts", timeout=2) if r["scope"] == "contract"]
        return records if len(records) >= 2 else None

    alerts = await eventually(contract_alerts, timeout=30)
    assert [(a["level"], a["threshold"], a["usage"]) for a in alerts] == [(80, 100, 85), (100, 100, 105)]
    assert all(a["contract_id"] == "c_al" for a in alerts)
    assert sorted(alerts[0]["recipients"]) == ["cfo@acme.example.com", "fin@acme.example.com", "ops@acme.example.com"]
    assert alerts[1]["estimated_cost"] == {"amount": "0.25", "currency": "EUR"}  # 5 over × 0.05
    assert alerts[0]["alert_id"] != alerts[1]["alert_id"]


async def test_usage_counted_before_a_workspace_joined_does_not_alert_the_contract_a_second_time(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    """A workspace counts in calendar months until it hears of its contract; what it counted
    then is not one of the contract's periods, so it must not start a second "current" period
    whose levels would alert a second time."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    await produce(bootstrap, prefix + "usage.events", [(b"ws_early", event("ws_early", "whatsapp", 10))])

    def whatsapp_of(workspace: str) -> int | None:
        status, body = http_get(f"{running_worker.base_url}/usage/{workspace}")
        return (body["metrics"].get("whatsapp") or {}).get("usage") if status == 200 else None

    await eventually(lambda: whatsapp_of("ws_early") == 10)
    command = subscription("c_late", ["ws_early", "ws_joiner"])
    command["prices"]["whatsapp"] = {"unit_price": "0.01", "included": 10}
    await produce(bootstrap, prefix + "usage.control", [(b"c_late", command)])
    # ws_joiner has no usage: the worker knows it (200) only once the contract's terms reach it.
    await eventually(lambda: usage_of(running_worker, "ws_early").get("contract_id") == "c_late")
    await eventually(lambda: usage_of(running_worker, "ws_joiner").get("contract_id") == "c_late")
    await produce(bootstrap, prefix + "usage.events", [(b"ws_joiner", event("ws_joiner", "whatsapp", 12))])

    async def contract_alerts() -> list[dict] | None:
        records = await read_all(bootstrap, prefix + "usage.alerts", timeout=2)
        return [r for r in records if r["scope"] == "contract" and r["contract_id"] == "c_late"] or None

    await eventually(contract_alerts, timeout=30)
    await asyncio.sleep(3)  # a second alert, were there one, would have come by now
    alerts = await contract_alerts()
    start, end = expected_period(datetime.now(UTC), 31, ZONE)
    assert [(a["level"], a["threshold"]) for a in alerts] == [(100, 10)]
    assert (parse(alerts[0]["period_start"]), parse(alerts[0]["period_end"])) == (start, end)


async def test_a_contract_alerts_at_the_levels_it_chose_and_never_on_seats(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    command = subscription("c_lv", ["ws_lv_1", "ws_lv_2"])
    command["prices"]["seats"] = {"unit_price": "39.00", "included": 5}
    await produce(bootstrap, prefix + "usage.control", [(b"c_lv", command)])
    await eventually(
        lambda: (http_get(f"{running_worker.base_url}/usage/ws_lv_2")[1] or {}).get("contract_id") == "c_lv"
    )

    def contract_alert_settings(metric: str, levels: list[int]) -> dict:
        fields = {"contract_id": "c_lv", "actor": ADMIN, "metric": metric, "levels": levels, "enabled": True}
        return bare_command("contract_alert_settings", **fields)

    only_50 = contract_alert_settings("sms", [50])
    on_seats = contract_alert_settings("seats", [100])
    await produce(bootstrap, prefix + "usage.control", [(b"c_lv", only_50), (b"c_lv", on_seats)])
    wanted = {only_50["command_id"], on_seats["command_id"]}

    async def answers() -> dict[str, dict] | None:
        results = await read_all(bootstrap, prefix + "usage.command-results", timeout=2)
        mine = {r["command_id"]: r for r in results if r["command_id"] in wanted}
        return mine if len(mine) == len(wanted) else None

    results = await eventually(answers, timeout=30)
    assert results[only_50["command_id"]] == {"command_id": only_50["command_id"], "status": "applied"}
    assert results[on_seats["command_id"]]["status"] == "rejected"
    assert results[on_seats["command_id"]]["reason"].startswith("alerts_not_available_on_seats: ")

    # 100 sms included: 30, 55, 85, 105 pass 50 % once, and 80 % and 100 % unchosen.
    for workspace, quantity, total in [
        ("ws_lv_1", 30, 30),
        ("ws_lv_2", 25, 55),
        ("ws_lv_1", 30, 85),
        ("ws_lv_2", 20, 105),
    ]:
        await produce(bootstrap, prefix + "usage.events", [(workspace.encode(), event(workspace, "sms", quantity))])
        await eventually(lambda total=total: contract_usage_seen_by(running_worker, "ws_lv_1") == total)
    # 5 seats included: 4 and 3 make 7, past 80 % and 100 %.
    await produce(
        bootstrap,
        prefix + "usage.events",
        [(b"ws_lv_1", event("ws_lv_1", "seats", 4)), (b"ws_lv_2", event("ws_lv_2", "seats", 3))],
    )
    await eventually(lambda: contract_usage_seen_by(running_worker, "ws_lv_1", "seats") == 7)

    async def contract_alerts() -> list[dict] | None:
        records = await read_all(bootstrap, prefix + "usage.alerts", timeout=2)
        return [r for r in records if r["scope"] == "contract" and r["contract_id"] == "c_lv"] or None

    await eventually(contract_alerts, timeout=30)
    await asyncio.sleep(3)  # any other alert would have come by now
    alerts = await contract_alerts()
    assert [(a["metric"], a["level"], a["threshold"], a["usage"]) for a in alerts] == [("sms", 50, 100, 55)]
    start = parse(alerts[0]["period_start"])
    assert start == expected_period(datetime.now(UTC), 31, ZONE)[0]
    assert alerts[0]["alert_id"] == alert_id("contract", "c_lv", "sms", start, 100, 50)
