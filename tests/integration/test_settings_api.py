"""A workspace's settings over HTTP: read them, and change them with a token that carries the
billing permission; each change is the matching ``usage.control`` command, answered with its
result (CONTRACT 6, settings)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from tests.conftest import healthy_worker
from tests.support.kafka_io import produce, read_all
from tests.support.messages import bare_command, event
from tests.support.worker import WorkerProcess, eventually, http_get, http_put, token_for

WS = "ws_settings"
OTHER = "ws_settings_other"


async def test_settings_are_read_and_changed_over_http_by_whoever_may_manage_billing(
    two_workers: list[WorkerProcess], deployment: dict[str, str]
) -> None:
    first, second = two_workers
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    subscription = bare_command(
        "subscription",
        contract_id="c_settings",
        workspace_ids=[WS],
        billing_anchor="2026-01-01",
        timezone="UTC",
        currency="EUR",
        prices={"sms": {"unit_price": "0.0125", "included": 500}},
    )
    await produce(bootstrap, prefix + "usage.control", [(b"c_settings", subscription)])
    await produce(bootstrap, prefix + "usage.events", [(WS.encode(), event(WS, "sms", 300))])
    await eventually(lambda: ((http_get(f"{first.base_url}/usage/{WS}")[1] or {}).get("metrics") or {}).get("sms"))

    alice = token_for(WS, billing=True, subject="alice@example.com")
    url = f"{second.base_url}/usage/{WS}/settings"  # any worker takes a change

    status, answer = http_put(f"{url}/alerts/sms", {"threshold": 1000, "early_warnings": True}, alice)
    assert (status, answer["status"]) == (200, "applied"), answer
    assert answer["command_id"].startswith("http-")

    # Lowered below the 300 used: it applies from the next period.
    status, answer = http_put(f"{url}/alerts/sms", {"threshold": 200, "early_warnings": False}, alice)
    assert (status, answer["status"]) == (200, "scheduled"), answer
    usage = http_get(f"{first.base_url}/usage/{WS}")[1]
    assert answer["effective_from"] == usage["period_end"]

    status, answer = http_put(f"{url}/limits/fin_resolutions", {"limit": 25, "enabled": True}, alice)
    assert (status, answer["status"]) == (200, "applied"), answer
    emails = ["ana@example.com", "bo@example.com"]
    status, answer = http_put(f"{url}/billing-contacts", {"emails": emails}, alice)
    assert (status, answer["status"]) == (200, "applied"), answer

    for worker in two_workers:  # read through either worker: the owner answers
        status, settings = http_get(f"{worker.base_url}/usage/{WS}/settings", token=alice)
        assert status == 200, settings
        sms = settings["alerts"]["sms"]
        assert (sms["threshold"], sms["early_warnings"], sms["enabled"]) == (1000, True, True)
        assert sms["changed_by"] == "alice@example.com" and datetime.fromisoformat(sms["changed_at"])
        # Reaching 1,000 costs what lies above the 500 included: 500 x 0.0125.
        assert sms["threshold_cost"] == {"amount": "6.25", "currency": "EUR"}
        scheduled = sms["scheduled"]
        assert (scheduled["threshold"], scheduled["effective_from"]) == (200, usage["period_end"])
        assert settings["limits"] == {
            "fin_resolutions": {
                "limit": 25,
                "enabled": True,
                "state": "enabled",
                "changed_by": "alice@example.com",
                "changed_at": settings["limits"]["fin_resolutions"]["changed_at"],
            }
        }
        assert settings["billing_contacts"] == emails
        assert settings["may_change"] is True
        assert http_get(f"{worker.base_url}/usage/{WS}/settings", token=token_for(WS))[1]["may_change"] is False
        # What any level would cost, as the page asks while a level is typed: 1,500 above the 500 included.
        status, quote = http_get(f"{worker.base_url}/usage/{WS}/settings/alerts/sms/cost?threshold=2000", token=alice)
        assert (status, quote) == (
            200,
            {"metric": "sms", "threshold": 2000, "cost": {"amount": "18.75", "currency": "EUR"}},
        )
        assert (
            http_get(f"{worker.base_url}/usage/{WS}/settings/alerts/email/cost?threshold=10", token=alice)[1]["cost"]
            is None
        )
        for wrong in ("sms/cost?threshold=0", "sms/cost?threshold=ten", "seats/cost?threshold=5"):
            assert http_get(f"{worker.base_url}/usage/{WS}/settings/alerts/{wrong}", token=alice)[0] == 400


async def test_a_change_needs_billing_permission_for_that_workspace_and_a_valid_setting(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    url = f"{running_worker.base_url}/usage/{WS}/settings"
    alert = {"threshold": 100, "early_warnings": False, "enabled": True}

    assert http_put(f"{url}/alerts/sms", alert, None)[0] == 401
    assert http_put(f"{url}/alerts/sms", alert, token_for(WS))[1] == {
        "error": "forbidden",
        "reason": "changing settings needs billing permission",
    }
    assert http_put(f"{url}/alerts/sms", alert, token_for(OTHER, billing=True))[0] == 403
    assert http_put(f"{url}/alerts/sms", alert, token_for(WS, billing=True, metrics=["email"]))[0] == 403

    billing = token_for(WS, billing=True)
    for path, body, reason in [
        ("alerts/seats", alert, "alerts_not_available_on_seats"),
        ("limits/seats", {"limit": 5}, "limits_not_available_on_seats"),
        ("alerts/sms", {"threshold": -1}, "invalid_command: alert_settings.threshold"),
        ("alerts/tweets", alert, "invalid_command: alert_settings.metric"),
        ("alerts/sms", {"threshold": 5, "colour": "red"}, "unknown field 'colour'"),
        ("billing-contacts", {"emails": ["not an address"]}, "invalid_command: billing_contacts.emails"),
    ]:
        status, answer = http_put(f"{url}/{path}", body, billing)
        assert status == 400 and answer["error"] == "invalid_settings", (path, answer)
        assert answer["reason"].startswith(reason), (path, answer)

    # Nothing was published: no command was answered.
    bootstrap, prefix = deployment["METERWATCH_KAFKA_BOOTSTRAP"], deployment["METERWATCH_TOPIC_PREFIX"]
    assert await read_all(bootstrap, prefix + "usage.command-results", timeout=3) == []


async def test_with_signed_commands_the_worker_signs_what_it_publishes(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    env = {**deployment, "METERWATCH_COMMAND_KEYS": f"settings-2027:{'n' * 40},settings-2026:{'o' * 40}"}
    with healthy_worker(env, tmp_path / "worker.log") as worker:
        url = f"{worker.base_url}/usage/{WS}/settings/alerts/email"
        status, answer = http_put(url, {"threshold": 50}, token_for(WS, billing=True))
        assert (status, answer["status"]) == (200, "applied"), answer
        # The same command unsigned, straight onto the topic, is refused.
        unsigned = bare_command("alert_settings", workspace_id=WS, actor={"id": "x", "billing_permission": True},
                                metric="email", threshold=60)  # fmt: skip
        bootstrap, prefix = env["METERWATCH_KAFKA_BOOTSTRAP"], env["METERWATCH_TOPIC_PREFIX"]
        await produce(bootstrap, prefix + "usage.control", [(WS.encode(), unsigned)])

        async def refused() -> bool:
            results = await read_all(bootstrap, prefix + "usage.command-results", timeout=2)
            return any(r["command_id"] == unsigned["command_id"] and r["status"] == "rejected" for r in results)

        await eventually(refused, timeout=30)
        settings = http_get(f"{worker.base_url}/usage/{WS}/settings")[1]
        assert settings["alerts"]["email"]["threshold"] == 50
