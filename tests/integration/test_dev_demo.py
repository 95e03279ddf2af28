"""``meterwatch dev`` as a new user runs it: the billing period so far is backfilled, then a story
plays live. Checked from outside, through the usage API and the topics of the broker dev starts.

The usage page after the backfill and the live story is photographed into
``tests/artifacts/usage-page-demo.png`` (and its first screen, ``…-first-screen.png``) when Debian's
chromium and chromium-driver are installed (CI installs them).
"""

from __future__ import annotations

import mailbox
import os
import re
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from meterwatch.demo import CONTRACT_CYCLE
from tests.support.browser import ARTIFACTS, chromium_available, full_page_screenshot, start_browser
from tests.support.kafka_io import read_all
from tests.support.worker import TEST_AUTH_SECRET, eventually, free_port, http_get, token_for

ZONES = {"ws_acme_eu": "Europe/Dublin", "ws_acme_us": "Europe/Dublin", "ws_globex": "UTC"}
ADDITIVE = ("messages_sent", "email", "sms", "whatsapp", "phone")
LINE = "[meterwatch dev] "


class Dev:
    def __init__(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERWATCH_")}
        (tmp_path / "tmp").mkdir()
        self.port = free_port()
        env |= {"TMPDIR": str(tmp_path / "tmp"), "METERWATCH_WEB_PORT": str(self.port)}
        env["METERWATCH_AUTH_SECRET"] = TEST_AUTH_SECRET
        self.output_path = tmp_path / "dev.out"
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "meterwatch", "dev", "--events-per-second", "40", "--duration", "300"],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return [line.removeprefix(LINE) for line in self.output_path.read_text(errors="replace").splitlines()]

    async def said(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            assert self.process.poll() is None, "\n".join(self.lines())
            return next((m for line in self.lines() if (m := re.search(pattern, line))), None)

        try:
            return await eventually(found, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(f"dev never said {pattern!r}:\n" + "\n".join(self.lines())) from None

    def get(self, path: str) -> dict:
        status, body = http_get(self.base + path, token=token_for(*ZONES))
        assert status == 200, (path, status, body)
        return body


async def test_the_demo_shows_a_lived_in_period_then_crosses_levels_and_fin_limits_live(tmp_path: Path) -> None:
    dev = Dev(tmp_path)
    try:
        bootstrap = (await dev.said(r"embedded Kafka-compatible broker \(Tansu\) on (\S+)", 90))[1]
        started = datetime.now(UTC)
        await dev.said(r"DEMO   backfilled \d+ events", 120)
        await dev.said(r"FIN    ws_acme_eu: Fin enabled \(usage_dropped", 150)
        if chromium_available():
            photograph_the_page(dev, tmp_path)

        events = await read_all(bootstrap, "usage.events", timeout=5, isolation="read_uncommitted")
        await the_period_so_far_is_counted_day_by_day_exactly(dev, events, started)
        the_curve_has_a_working_week(dev)
        seats_changed_in_the_period(dev)
        await the_levels_were_crossed_and_fin_turned_off_and_on(bootstrap)
        await the_whatsapp_cost_alert_fired(dev, bootstrap)
        await the_history_shows_each_alert_with_its_deliveries(dev)

        dev.process.send_signal(signal.SIGTERM)
        assert dev.process.wait(timeout=15) == 0, "\n".join(dev.lines())
        the_summary_adds_up(dev)
    finally:
        if dev.process.poll() is None:
            dev.process.kill()
            dev.process.wait()


async def the_period_so_far_is_counted_day_by_day_exactly(dev: Dev, events: list[dict], started: datetime) -> None:
    """Every day before today holds only backfilled (and late) usage: /daily must equal the topic's
    events of that day, each event_id once, the correction included."""
    seen: set[str] = set()
    per_day: dict[tuple[str, str], Counter[date]] = defaultdict(Counter)
    repeated = []
    for event in events:
        if event["event_id"] in seen:
            repeated.append(event)
            continue
        seen.add(event["event_id"])
        if event["metric"] in ADDITIVE:
            day = datetime.fromisoformat(event["occurred_at"]).astimezone(ZoneInfo(ZONES[event["workspace_id"]])).date()
            per_day[event["workspace_id"], event["metric"]][day] += event["quantity"]
    assert len(repeated) == 1 and repeated[0]["workspace_id"] == "ws_acme_us", repeated
    assert any(e["quantity"] < 0 and e["metric"] == "email" for e in events), "no correction was sent"

    def differences() -> list[tuple[str, str, date, int, int]]:
        found = []
        for workspace, zone in ZONES.items():
            today = started.astimezone(ZoneInfo(zone)).date()
            for metric in ADDITIVE:
                running = 0
                for point in dev.get(f"/usage/{workspace}/daily?metric={metric}")["days"]:
                    day = date.fromisoformat(point["date"])
                    if day >= today:
                        break
                    running += per_day[workspace, metric][day]
                    if point["usage"] != running:
                        found.append((workspace, metric, day, point["usage"], running))
        return found

    try:
        await eventually(lambda: not differences(), timeout=30, interval=1)
    except AssertionError:
        differ = differences()
        raise AssertionError(
            f"/daily and usage.events differ (workspace, metric, day, /daily, events): {differ}"
        ) from None
    days_compared = sum(
        1
        for workspace, zone in ZONES.items()
        for day in per_day[workspace, "messages_sent"]
        if day < started.astimezone(ZoneInfo(zone)).date()
    )
    assert days_compared > 0, "the periods started today: no earlier day to compare"


def the_curve_has_a_working_week(dev: Dev) -> None:
    days = dev.get("/usage/ws_acme_eu/daily?metric=messages_sent")["days"]
    growth = [(date.fromisoformat(b["date"]), b["usage"] - a["usage"]) for a, b in zip(days, days[1:], strict=False)]
    weekdays = [n for day, n in growth[:-1] if day.weekday() < 5]
    weekends = [n for day, n in growth[:-1] if day.weekday() >= 5]
    assert sum(1 for _, n in growth if n > 0) >= min(3, len(growth)), growth
    if weekdays and weekends:
        assert sum(weekdays) / len(weekdays) > 2 * sum(weekends) / len(weekends), growth


def seats_changed_in_the_period(dev: Dev) -> None:
    counts = [point["usage"] for point in dev.get("/usage/ws_acme_eu/daily?metric=seats")["days"]]
    if len(counts) >= 2:
        assert counts[0] == 8 and counts[-1] == 11, counts


async def the_levels_were_crossed_and_fin_turned_off_and_on(bootstrap: str) -> None:
    expected = {("ws_acme_us", "sms", 50), ("ws_acme_us", "sms", 80), ("c_acme", "messages_sent", 80)}

    async def all_reached() -> bool:
        alerts = await read_all(bootstrap, "usage.alerts", timeout=3, isolation="read_uncommitted")
        return expected <= {(a.get("workspace_id") or a["contract_id"], a["metric"], a["level"]) for a in alerts}

    await eventually(all_reached, timeout=30)
    alerts = await read_all(bootstrap, "usage.alerts", timeout=3, isolation="read_uncommitted")
    warnings = [a for a in alerts if a.get("kind") == "forecast"]
    for warning in warnings:
        assert (warning["workspace_id"], warning["metric"]) == ("ws_acme_us", "sms"), warning
        assert warning["projected_usage"] * 100 >= warning["level"] * warning["threshold"], warning
    period = CONTRACT_CYCLE.period_containing(datetime.now(UTC))
    complete_days, days_left = (datetime.now(UTC) - period.start).days, (period.end - datetime.now(UTC)).days
    if complete_days >= 3 and days_left >= 5:
        # At the backfill's pace (290 SMS in the days so far) the alert's levels lie ahead.
        assert len(warnings) == 1, alerts
    limits = await read_all(bootstrap, "usage.limits", timeout=3, isolation="read_uncommitted")
    fin = [(record["state"], record["reason"]) for record in limits if record["workspace_id"] == "ws_acme_eu"]
    assert ("disabled", "limit_reached") in fin and fin[-1] == ("enabled", "usage_dropped"), fin


async def the_whatsapp_cost_alert_fired(dev: Dev, bootstrap: str) -> None:
    """ws_acme_us's cost alert on WhatsApp (6.00 USD at 0.03 USD a message): 50% during the
    backfill, 100% by the live story's burst at the latest (80% on the way, during the backfill
    or live), each once, in dev's output and on usage.alerts."""
    await dev.said(r"COST   ws_acme_us: estimated whatsapp cost [\d.]+ USD reached 50% of 6\.00 USD", 30)
    await dev.said(r"COST   ws_acme_us: estimated whatsapp cost [\d.]+ USD reached 100% of 6\.00 USD", 30)
    await dev.said(r"MAIL   to billing@acme-us\.example\.com: 100% of your WhatsApp cost alert \(6\.00 USD\)", 30)
    alerts = await read_all(bootstrap, "usage.alerts", timeout=3, isolation="read_uncommitted")
    costs = [a for a in alerts if a.get("kind") == "cost"]
    assert [(a["workspace_id"], a["metric"]) for a in costs] == [("ws_acme_us", "whatsapp")] * len(costs), costs
    levels = [a["level"] for a in costs]
    assert levels[0] == 50 and levels[-1] == 100 and levels == sorted(set(levels)), costs
    assert all(a["cost_threshold"] == {"amount": "6.00", "currency": "USD"} for a in costs), costs
    assert Decimal(costs[-1]["estimated_cost"]["amount"]) >= Decimal(6), costs
    assert all(a["cause_event_id"] for a in costs) and len({a["alert_id"] for a in costs}) == len(costs), costs
    settings = dev.get("/usage/ws_acme_us/settings")["cost_alerts"]
    assert settings["whatsapp"]["amount"] == "6.00" and settings["whatsapp"]["enabled"], settings


async def the_history_shows_each_alert_with_its_deliveries(dev: Dev) -> None:
    """The alert history dev points to: ws_acme_us's SMS and WhatsApp cost alerts, each mailed to
    its billing contact and posted to dev's webhook receiver."""
    assert re.search(r"curl .*/usage/ws_acme_us/alerts", "\n".join(dev.lines())), "dev shows no history link"

    async def delivered() -> list[dict] | None:
        alerts = dev.get("/usage/ws_acme_us/alerts")["alerts"]
        mine = [a for a in alerts if (a["metric"], a.get("kind")) in {("sms", None), ("whatsapp", "cost")}]
        settled = all(
            a["delivery"]["email"] == "sent" and [w["state"] for w in a["delivery"]["webhooks"]] == ["sent"]
            for a in mine
        )
        return mine if mine and settled and {a["metric"] for a in mine} == {"sms", "whatsapp"} else None

    await eventually(delivered, timeout=30)


def the_summary_adds_up(dev: Dev) -> None:
    line = next(line for line in dev.lines() if line.startswith("SUMMARY "))
    figures = {name: int(n) for name, n in re.findall(r"([a-zA-Z ]+): (\d+)", line.removeprefix("SUMMARY "))}
    figures = {name.strip(): n for name, n in figures.items()}
    assert figures["repeats skipped"] == 1, line
    assert figures["dead letters"] == 0, line
    assert figures["alerts"] >= 3 and figures["limit changes"] >= 2, line
    # Every event the broker took is accounted for by the time the summary is printed.
    assert figures["counted"] > 0, line
    assert figures["events sent"] == figures["counted"] + figures["repeats skipped"], line
    assert figures["webhooks"] > 0, line
    deliveries = [line for line in dev.lines() if line.startswith("WEBHOOK ")]
    assert any(" alert " in d for d in deliveries) and any(" limit " in d for d in deliveries), deliveries
    unverified = [d for d in deliveries if not d.endswith("signature verified")]
    assert not unverified, unverified
    path = re.search(r"\(in (\S+\.mbox)\)", line)
    assert path is not None, line
    assert len(mailbox.mbox(path[1])) == figures["mails"] > 0, line


def photograph_the_page(dev: Dev, tmp_path: Path) -> None:
    browser_session = start_browser(tmp_path)
    driver = next(browser_session)
    try:
        driver.get(f"{dev.base}/ui/usage/ws_acme_eu?token={token_for(*ZONES, billing=True)}")
        driver.implicitly_wait(10)
        driver.find_element("css selector", "svg path")  # a chart has been drawn
        full_page_screenshot(driver, ARTIFACTS / "usage-page-demo.png")
        driver.set_window_size(1280, 1400)
        driver.save_screenshot(str(ARTIFACTS / "usage-page-demo-first-screen.png"))
    finally:
        browser_session.close()
