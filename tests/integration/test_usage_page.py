"""The usage page in a real browser: headless Chromium driven through chromedriver, against a real
worker on a real broker (CONTRACT 7; the help article's "Viewing your usage").

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; skipped without
them. Screenshots land in ``tests/artifacts/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.support.browser import ARTIFACTS, chromium_available, full_page_screenshot, start_browser
from tests.support.kafka_io import produce, read_all
from tests.support.messages import bare_command, command, event
from tests.support.worker import WorkerProcess, eventually, http_get, token_for

if not chromium_available():
    pytest.skip("needs Debian's chromium and chromium-driver packages", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WS = "ws_page"
CONTRACT = "c_page"
OTHER = "ws_page_other"  # a workspace the page's token does not name
ZONE = "America/New_York"
ANCHOR_DAY = 15


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    yield from start_browser(tmp_path)


# ---- what the test sends -------------------------------------------------------------------


class Kafka:
    def __init__(self, deployment: dict[str, str]) -> None:
        self.bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
        self.prefix = deployment["METERWATCH_TOPIC_PREFIX"]

    async def commands(self, key: str, *commands: dict) -> dict[str, dict]:
        await produce(self.bootstrap, self.prefix + "usage.control", [(key.encode(), c) for c in commands])
        ids = {c["command_id"] for c in commands}

        async def answered() -> dict[str, dict] | None:
            results = await read_all(self.bootstrap, self.prefix + "usage.command-results", timeout=2)
            mine = {r["command_id"]: r for r in results if r["command_id"] in ids}
            return mine if len(mine) == len(ids) else None

        return await eventually(answered, timeout=30)

    async def use(self, *events: dict) -> None:
        await produce(self.bootstrap, self.prefix + "usage.events", [(WS.encode(), e) for e in events])


def current_period(now: datetime) -> tuple[date, date]:
    """An independent oracle: the local first and last day of the period (anchor day ≤ 28)."""
    today = now.astimezone(ZoneInfo(ZONE)).date()
    start = today.replace(day=ANCHOR_DAY)
    if start > today:
        start = (start - timedelta(days=28)).replace(day=ANCHOR_DAY)
    following = (start + timedelta(days=31)).replace(day=ANCHOR_DAY)
    return start, following - timedelta(days=1)


# ---- what a person sees --------------------------------------------------------------------


def section(driver: WebDriver, metric: str) -> WebElement:
    return driver.find_element(By.ID, f"metric-{metric}")


def fact(driver: WebDriver, metric: str, name: str) -> str:
    return section(driver, metric).find_element(By.CSS_SELECTOR, f"[data-fact={name}]").text


def shows(driver: WebDriver, metric: str, name: str, expected: str, timeout: float = 20) -> None:
    def matches(d: WebDriver) -> bool:
        try:
            return fact(d, metric, name) == expected
        except Exception:
            return False

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        matches, message=f"{metric} {name} never showed {expected!r}"
    )


def dollars(cost: dict) -> str:
    assert cost["currency"] == "USD"
    units, cents = cost["amount"].split(".")
    return f"${int(units):,}.{cents}"


def assert_charts_are_named(driver: WebDriver) -> None:
    for svg in driver.find_elements(By.CSS_SELECTOR, "svg"):
        if svg.get_attribute("aria-hidden") == "true":
            continue
        assert svg.get_attribute("role") == "img", svg.get_attribute("outerHTML")[:200]
        assert svg.accessible_name, svg.get_attribute("outerHTML")[:200]


async def test_the_usage_page_shows_the_period_charts_and_costs_and_follows_usage(
    running_worker: WorkerProcess, deployment: dict[str, str], browser: WebDriver
) -> None:
    kafka = Kafka(deployment)
    base = running_worker.base_url
    started = time.monotonic()

    subscription = bare_command(
        "subscription",
        contract_id=CONTRACT,
        workspace_ids=[WS],
        billing_anchor=f"2026-01-{ANCHOR_DAY}",
        timezone=ZONE,
        currency="USD",
        prices={
            "sms": {"unit_price": "0.0125", "included": 1000},
            "email": {"unit_price": "0.002", "included": None},
            "fin_resolutions": {"unit_price": "0.99", "included": None},
        },
    )
    await kafka.commands(CONTRACT, subscription)
    await eventually(lambda: (http_get(f"{base}/usage/{WS}")[1] or {}).get("contract_id") == CONTRACT)
    results = await kafka.commands(
        WS,
        command("billing_contacts", WS, emails=["ana@example.com"]),
        command("alert_settings", WS, metric="sms", threshold=1500, early_warnings=True, enabled=True),
        command("alert_settings", WS, metric="email", threshold=2000, early_warnings=False, enabled=True),
        command("limit_settings", WS, metric="fin_resolutions", limit=3, enabled=True),
        command("limit_settings", WS, metric="email", limit=5000, enabled=True),
    )
    assert {r["status"] for r in results.values()} == {"applied"}, results
    # Emails: most of them sent yesterday, so the page has a pace to project from (on the
    # period's first day there is no yesterday in it, and no projection).
    first, last = current_period(datetime.now(UTC))
    local = ZoneInfo(ZONE)
    yesterday = datetime.now(local).date() - timedelta(days=1)
    has_past = yesterday >= first
    emails = (
        [event(WS, "email", 1000, at=datetime.combine(yesterday, datetime.min.time(), local) + timedelta(hours=12)),
         event(WS, "email", 234)]
        if has_past
        else [event(WS, "email", 1234)]
    )  # fmt: skip
    await kafka.use(
        event(WS, "sms", 500),
        event(WS, "sms", 300),
        event(WS, "sms", 3),
        *emails,
        event(WS, "fin_resolutions", 1, "conv-1"),
    )

    def usage_is(**expected: int) -> dict | None:
        status, body = http_get(f"{base}/usage/{WS}")
        if status != 200:
            return None
        metrics = body["metrics"]
        return body if all((metrics.get(m) or {}).get("usage") == n for m, n in expected.items()) else None

    await eventually(lambda: usage_is(sms=803, email=1234, fin_resolutions=1))
    # Lowered below the usage so far: takes effect next period, so the page shows it as scheduled.
    [lowered] = (
        await kafka.commands(
            WS, command("alert_settings", WS, metric="email", threshold=1000, early_warnings=False, enabled=True)
        )
    ).values()
    assert lowered["status"] == "scheduled"
    api = await eventually(lambda: usage_is(sms=803))
    assert api["metrics"]["sms"]["estimated_cost"] == {"amount": "0.00", "currency": "USD"}  # within the 1,000 included
    assert api["metrics"]["email"]["estimated_cost"] == {"amount": "2.47", "currency": "USD"}  # 1,234 × 0.002
    set_up = time.monotonic() - started

    # ---- the page, as a person opens it: without a token it asks for one
    browser.get(f"{base}/ui/usage/{WS}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sign-in needed"
    browser.get_log("browser")  # the 401 is logged; what matters is what follows
    # with the link a person is given: the token moves into a cookie and out of the address
    browser.get(f"{base}/ui/usage/{WS}?token={token_for(WS, 'ws_nobody')}")
    assert browser.current_url == f"{base}/ui/usage/{WS}"
    cookie = browser.get_cookie("meterwatch_token")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
    shows(browser, "sms", "usage", "803")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Usage"
    assert browser.title == f"Usage · {WS}"

    period = browser.find_element(By.ID, "period").text
    for day in (first, last):
        assert f"{day:%b} {day.day}" in period, period
    assert str(last.year) in period, period

    headings = [
        s.find_element(By.TAG_NAME, "h2").text for s in browser.find_elements(By.CSS_SELECTOR, "section.metric")
    ]
    assert headings == ["SMS", "Emails", "Fin AI Agent resolutions"]
    for metric in ("sms", "email", "fin_resolutions"):
        chart = section(browser, metric).find_element(By.CSS_SELECTOR, "svg[role=img]")
        assert chart.find_elements(By.CSS_SELECTOR, "path.usage"), f"{metric}: no usage line"

    assert fact(browser, "email", "usage") == "1,234"
    assert fact(browser, "fin_resolutions", "usage") == "1"
    for metric in ("sms", "email", "fin_resolutions"):
        assert fact(browser, metric, "cost") == dollars(api["metrics"][metric]["estimated_cost"])
    assert fact(browser, "sms", "contract") == "1,000 included"
    assert not section(browser, "email").find_element(By.CSS_SELECTOR, "[data-row=contract]").is_displayed()
    assert "pay-as-you-go" in fact(browser, "email", "cost-note").lower()
    assert (fact(browser, "sms", "alert"), fact(browser, "sms", "alert-level")) == ("At 1,500", "50% reached")
    assert fact(browser, "sms", "alert-note") == "Also alerts at 50% and 80%"
    assert fact(browser, "email", "scheduled").startswith("At 1,000 from ")
    assert fact(browser, "email", "scheduled").endswith("(next period)")
    assert (fact(browser, "fin_resolutions", "limit"), fact(browser, "fin_resolutions", "limit-state")) == (
        "3 resolutions",
        "On",
    )
    # A hard limit on another metric is shown the same way, under its own names.
    email_limit = section(browser, "email").find_element(By.CSS_SELECTOR, "[data-row=limit]")
    assert email_limit.text.splitlines() == ["Hard limit", "5,000"]
    email_state = section(browser, "email").find_element(By.CSS_SELECTOR, "[data-row=limit-state]")
    assert email_state.text.splitlines() == ["Emails", "On"]
    assert not section(browser, "sms").find_element(By.CSS_SELECTOR, "[data-row=limit]").is_displayed()

    # The SMS chart: the contracted amount as a blue line, the alert threshold above it, usage below both.
    sms_chart = section(browser, "sms").find_element(By.CSS_SELECTOR, ".plot svg")
    contracted = sms_chart.find_element(By.CSS_SELECTOR, "line.ref.contracted")
    alert = sms_chart.find_element(By.CSS_SELECTOR, "line.ref.alert")
    assert contracted.value_of_css_property("stroke") == "rgb(5, 80, 174)"  # blue
    dot_y = float(sms_chart.find_element(By.TAG_NAME, "circle").get_attribute("cy"))
    assert float(alert.get_attribute("y1")) < float(contracted.get_attribute("y1")) < dot_y  # SVG y grows downwards
    labels = [t.text for t in sms_chart.find_elements(By.CSS_SELECTOR, "text.ref-label")]
    assert labels == ["Contracted 1,000", "Alert 1,500"]
    legend = section(browser, "sms").find_element(By.CLASS_NAME, "legend").text.splitlines()
    assert legend == ["Usage so far", *(["Projected: 803"] if has_past else []), "Contracted 1,000", "Alert 1,500"]

    # Where usage is heading by the period's end: the API's forecast, in words and as a dashed
    # line from today's point. SMS had no usage on a complete day, so it stays where it is;
    # emails rise at yesterday's pace.
    for metric in ("sms", "email"):
        projected = api["metrics"][metric]["forecast"]
        chart = section(browser, metric).find_element(By.CSS_SELECTOR, ".plot svg")
        if not has_past:
            assert projected is None
            assert not section(browser, metric).find_element(By.CSS_SELECTOR, "[data-row=forecast]").is_displayed()
            assert not chart.find_elements(By.CSS_SELECTOR, "path.projection")
            continue
        # The page asked a moment after the API: the time left, and so the projection, is a
        # little shorter.
        shown, _, cost = fact(browser, metric, "forecast").partition(" by the end of the period, ")
        assert projected["usage"] - 2 <= int(shown.replace(",", "")) <= projected["usage"], shown
        assert cost.startswith("$"), cost
        assert fact(browser, metric, "forecast-note").startswith("At the last ")
        [line] = chart.find_elements(By.CSS_SELECTOR, "path.projection")
        start, end = (tuple(map(float, p.split(","))) for p in line.get_attribute("d")[1:].split(" L"))
        dot = chart.find_element(By.TAG_NAME, "circle")
        assert (
            abs(start[0] - float(dot.get_attribute("cx"))) < 0.1
            and abs(start[1] - float(dot.get_attribute("cy"))) < 0.1
        )
        assert line.value_of_css_property("stroke-dasharray") not in ("none", "")
        if metric == "sms":
            assert projected["usage"] == 803 and end[1] == start[1]  # flat
        else:
            assert projected["usage"] > 1234 and end[1] < start[1]  # rising (SVG y grows downwards)
    email_lines = {
        line.get_attribute("class") for line in section(browser, "email").find_elements(By.CSS_SELECTOR, "line.ref")
    }
    assert email_lines == {"ref alert", "ref scheduled", "ref limit"}  # no contracted line: pay-as-you-go
    fin_lines = {
        line.get_attribute("class")
        for line in section(browser, "fin_resolutions").find_elements(By.CSS_SELECTOR, "line.ref")
    }
    assert fin_lines == {"ref limit"}

    # The period's alert history: the SMS alert at 50%, with neither mail nor webhooks configured.
    [sms_alert] = http_get(f"{base}/usage/{WS}/alerts")[1]["alerts"]
    assert (sms_alert["metric"], sms_alert["level"]) == ("sms", 50)

    def history_rows(d: WebDriver) -> list[list[str]]:
        rows = d.find_elements(By.CSS_SELECTOR, "#history tbody tr")
        return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")][1:] for row in rows]

    WebDriverWait(browser, 20, poll_frequency=0.2).until(lambda d: history_rows(d), message="no alert history shown")
    assert history_rows(browser) == [["SMS", "50% of 1,500", "—", "—"]]
    assert not browser.find_element(By.ID, "history-empty").is_displayed()

    # When the data was last updated: the time the API gives, shown to the reader.
    for metric in ("sms", "email", "fin_resolutions"):
        when = section(browser, metric).find_element(By.CSS_SELECTOR, "[data-fact=updated] time")
        assert when.get_attribute("datetime") == api["metrics"][metric]["last_updated"]
        assert when.text.strip()

    # Accessible: each chart is an image with a text equivalent, and a table of the figures;
    # any other SVG (the legend's swatches) is hidden from assistive technology.
    charts = browser.find_elements(By.CSS_SELECTOR, ".plot svg")
    assert len(charts) == 3
    assert_charts_are_named(browser)
    assert sms_chart.accessible_name.startswith("SMS: 803 used of 1,000 contracted; alert at 1,500")
    rows = section(browser, "sms").find_elements(By.CSS_SELECTOR, "table tbody tr")
    assert rows and rows[-1].find_element(By.TAG_NAME, "td").get_attribute("textContent") == "803"
    assert len(rows) == (datetime.now(ZoneInfo(ZONE)).date() - first).days + 1

    # Everything came from the worker: no other host, no console errors (CSP violations included).
    origins = browser.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)].map(u => new URL(u).origin)"
    )
    assert set(origins) == {base}, origins
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors

    browser.set_window_size(1280, 900)
    full_page_screenshot(browser, ARTIFACTS / "usage-page.png")

    # ---- more usage: the open page follows by itself, without reloading or moving the reader
    browser.set_window_size(1280, 700)
    browser.execute_script("window.scrollTo(0, 300); window.__sameDocument = true;")
    scrolled = browser.execute_script("return window.scrollY")
    await kafka.use(
        event(WS, "sms", 400), event(WS, "fin_resolutions", 1, "conv-2"), event(WS, "fin_resolutions", 1, "conv-3")
    )
    after = (await eventually(lambda: usage_is(sms=1203, fin_resolutions=3)))["metrics"]
    in_api = time.monotonic()
    shows(browser, "sms", "usage", "1,203", timeout=10)
    shows(browser, "sms", "alert-level", "80% reached", timeout=10)  # 1,203 ≥ 80% of 1,500
    shows(browser, "fin_resolutions", "limit-state", "Off: limit reached", timeout=10)
    followed = time.monotonic() - in_api
    assert browser.execute_script("return window.__sameDocument") is True  # not reloaded
    assert browser.execute_script("return window.scrollY") == scrolled
    assert after["sms"]["estimated_cost"]["amount"] == "2.54"  # 203 over the included 1,000 at 0.0125
    shows(browser, "sms", "cost", dollars(after["sms"]["estimated_cost"]), timeout=10)
    sms_chart = section(browser, "sms").find_element(By.CSS_SELECTOR, ".plot svg")
    assert sms_chart.accessible_name.startswith("SMS: 1,203 used of 1,000 contracted; alert at 1,500")
    dot_y = float(sms_chart.find_element(By.TAG_NAME, "circle").get_attribute("cy"))
    alert_y = float(sms_chart.find_element(By.CSS_SELECTOR, "line.ref.alert").get_attribute("y1"))
    contracted_y = float(sms_chart.find_element(By.CSS_SELECTOR, "line.ref.contracted").get_attribute("y1"))
    assert alert_y < dot_y < contracted_y  # the usage has passed the contracted amount, not the alert

    # A phone (390 × 844 CSS pixels, a mobile viewport): no sideways scrolling, everything still there.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    time.sleep(0.5)
    assert browser.execute_script("return window.innerWidth") == 390
    widths = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths
    full_page_screenshot(browser, ARTIFACTS / "usage-page-phone.png")
    assert_charts_are_named(browser)

    # An unknown workspace the token names: 404, and a page that says so.
    status, _ = http_get(f"{base}/ui/usage/ws_nobody")
    assert status == 404
    browser.get(f"{base}/ui/usage/ws_nobody")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Workspace not found"
    # A workspace the token does not name: refused, whether it exists or not.
    browser.get(f"{base}/ui/usage/{OTHER}")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"
    assert http_get(f"{base}/usage/{OTHER}", token=token_for(WS))[0] == 403

    print(
        f"\n[usage page] set-up {set_up:.1f}s, page followed new usage in {followed:.1f}s, total {time.monotonic() - started:.1f}s"
    )


async def test_a_billing_person_changes_the_alert_on_the_page_and_sees_what_it_would_cost(
    running_worker: WorkerProcess, deployment: dict[str, str], browser: WebDriver
) -> None:
    kafka = Kafka(deployment)
    base = running_worker.base_url
    subscription = bare_command(
        "subscription",
        contract_id=CONTRACT,
        workspace_ids=[WS],
        billing_anchor=f"2026-01-{ANCHOR_DAY}",
        timezone=ZONE,
        currency="USD",
        prices={"sms": {"unit_price": "0.0125", "included": 1000}},
    )
    await kafka.commands(CONTRACT, subscription)
    await eventually(lambda: (http_get(f"{base}/usage/{WS}")[1] or {}).get("contract_id") == CONTRACT)
    await kafka.commands(
        WS,
        command("billing_contacts", WS, emails=["ana@example.com", "bo@example.com"]),
        command("alert_settings", WS, metric="sms", threshold=1500, early_warnings=True, enabled=True),
    )
    await kafka.use(event(WS, "sms", 803))
    await eventually(
        lambda: ((http_get(f"{base}/usage/{WS}")[1] or {}).get("metrics", {}).get("sms") or {}).get("usage") == 803
    )

    # Without billing permission: the figures and the contacts, no controls.
    browser.get(f"{base}/ui/usage/{WS}?token={token_for(WS)}")
    shows(browser, "sms", "usage", "803")
    assert browser.find_element(By.ID, "contact-list").text == "ana@example.com, bo@example.com"
    assert not section(browser, "sms").find_elements(By.CSS_SELECTOR, "form.alert-edit")

    # With it: the alert in force, and what reaching the level typed would cost, while typing.
    browser.delete_all_cookies()
    browser.get(f"{base}/ui/usage/{WS}?token={token_for(WS, billing=True, subject='ana@example.com')}")
    form = WebDriverWait(browser, 20).until(
        lambda d: section(d, "sms").find_element(By.CSS_SELECTOR, "form.alert-edit")
    )
    threshold = form.find_element(By.NAME, "threshold")
    assert threshold.get_attribute("value") == "1500"
    assert form.find_element(By.NAME, "early_warnings").is_selected()
    # 500 above the 1,000 the contract includes, at 0.0125.
    shows(browser, "sms", "threshold-price", "Reaching 1,500 would cost $6.25 this period")
    threshold.clear()
    threshold.send_keys("2000")
    shows(browser, "sms", "threshold-price", "Reaching 2,000 would cost $12.50 this period")
    forecast_warnings = form.find_element(By.NAME, "forecast_warnings")
    assert not forecast_warnings.is_selected()
    forecast_warnings.click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    shows(browser, "sms", "save-result", "Saved.")
    shows(browser, "sms", "alert", "At 2,000")
    assert http_get(f"{base}/usage/{WS}/settings")[1]["alerts"]["sms"]["forecast_warnings"] is True

    # Lowered below the 803 used: saved, and it says it applies from the next period.
    threshold.clear()
    threshold.send_keys("500")
    shows(browser, "sms", "threshold-price", "Reaching 500 would cost $0.00 this period")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    _, last = current_period(datetime.now(UTC))
    next_day = last + timedelta(days=1)
    shows(
        browser,
        "sms",
        "save-result",
        f"Saved. It is below the usage so far, so it applies from {next_day:%b} {next_day.day} (next period).",
    )
    shows(browser, "sms", "scheduled", f"At 500 from {next_day:%b} {next_day.day} (next period)")
    assert fact(browser, "sms", "alert") == "At 2,000"
    scheduled = http_get(f"{base}/usage/{WS}")[1]["metrics"]["sms"]["scheduled_alert"]
    assert (scheduled["threshold"], scheduled["changed_by"]) == (500, "ana@example.com")

    browser.set_window_size(1280, 900)
    full_page_screenshot(browser, ARTIFACTS / "usage-page-settings.png")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
