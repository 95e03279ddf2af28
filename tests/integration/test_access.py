"""Who may read what over HTTP, through two workers: every route but ``/health`` needs a token,
a workspace's token reads that workspace (and its metrics) only, whichever worker answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get, token_for

MEMBERS = [f"ws_acc_{i}" for i in range(8)]  # enough that both workers own some
CONTRACT = "c_access"
OUTSIDER = "ws_acc_outsider"


async def set_up(deployment: dict[str, str], workers: list[WorkerProcess]) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    subscription = {
        "type": "subscription",
        "command_id": "sub-access",
        "issued_at": datetime.now(UTC).isoformat(),
        "contract_id": CONTRACT,
        "workspace_ids": MEMBERS,
        "billing_anchor": "2026-01-01",
        "timezone": "UTC",
        "currency": "EUR",
        "prices": {"sms": {"unit_price": "0.05", "included": 1000}},
    }
    await produce(bootstrap, prefix + "usage.control", [(CONTRACT.encode(), subscription)])
    events = [(w.encode(), event(w, "sms", 3)) for w in [*MEMBERS, OUTSIDER]]
    events += [(w.encode(), event(w, "email", 2)) for w in [*MEMBERS, OUTSIDER]]
    await produce(bootstrap, prefix + "usage.events", events)

    def counted_everywhere() -> bool:
        for worker in workers:
            for workspace in MEMBERS:
                status, body = http_get(f"{worker.base_url}/usage/{workspace}")
                if status != 200 or (body["metrics"].get("sms") or {}).get("contract") != {
                    "usage": 24,
                    "included": 1000,
                }:
                    return False
        return True

    await eventually(counted_everywhere, timeout=90, interval=0.5)


async def test_every_route_but_health_needs_a_token_and_a_token_reads_only_what_it_names(
    two_workers: list[WorkerProcess], deployment: dict[str, str]
) -> None:
    await set_up(deployment, two_workers)
    member = MEMBERS[0]
    routes = [
        f"/usage/{member}",
        f"/usage/{member}/daily?metric=sms",
        f"/limits/{member}",
        f"/usage/{member}/alerts",
        f"/ui/usage/{member}",
        "/ui/static/usage.css",
        "/metrics",
        f"/internal/contract-usage/{CONTRACT}",
        "/internal/ledgers",
        "/no/such/route",
    ]
    expired = token_for(member, ttl=timedelta(seconds=-120))
    foreign = token_for(member, secret="a-secret-this-deployment-does-not-know")
    for worker in two_workers:
        assert http_get(f"{worker.base_url}/health", token=None)[0] == 200
        for route in routes:
            for token in (None, "garbage", expired, foreign):
                status, body = http_get(f"{worker.base_url}{route}", token=token)
                assert status == 401, (worker.base_url, route, token, status, body)

    # Each member's token, on both workers (one of them forwards to the other): its own usage,
    # with the contract's sums the owner asked another worker for; no other workspace's.
    for worker in two_workers:
        for index, workspace in enumerate(MEMBERS):
            token = token_for(workspace)
            status, body = http_get(f"{worker.base_url}/usage/{workspace}", token=token)
            assert status == 200 and body["workspace_id"] == workspace
            assert body["metrics"]["sms"]["contract"] == {"usage": 24, "included": 1000}
            assert set(body["metrics"]) == {"sms", "email"}
            assert http_get(f"{worker.base_url}/usage/{workspace}/daily?metric=sms", token=token)[0] == 200
            other = MEMBERS[(index + 1) % len(MEMBERS)]
            assert http_get(f"{worker.base_url}/limits/{workspace}", token=token)[0] == 200
            assert http_get(f"{worker.base_url}/usage/{workspace}/alerts", token=token)[0] == 200
            for route in (f"/usage/{other}", f"/usage/{other}/daily?metric=sms", f"/ui/usage/{other}", f"/limits/{other}",
                          f"/usage/{other}/alerts", f"/usage/{OUTSIDER}", "/metrics",
                          f"/internal/contract-usage/{CONTRACT}", "/internal/ledgers"):  # fmt: skip
                status, body = http_get(f"{worker.base_url}{route}", token=token)
                assert status == 403, (worker.base_url, route, status, body)
                assert body["error"] == "forbidden" if isinstance(body, dict) else "Not allowed" in body

    # A token limited to one metric reads that metric only.
    sms_only = token_for(member, metrics=["sms"])
    for worker in two_workers:
        status, body = http_get(f"{worker.base_url}/usage/{member}", token=sms_only)
        assert status == 200 and set(body["metrics"]) == {"sms"}
        assert http_get(f"{worker.base_url}/usage/{member}/daily?metric=sms", token=sms_only)[0] == 200
        assert http_get(f"{worker.base_url}/usage/{member}/daily?metric=email", token=sms_only)[0] == 403

    # A token naming several workspaces reads each of them; a service token reads everything.
    both = token_for(member, OUTSIDER)
    for worker in two_workers:
        assert http_get(f"{worker.base_url}/usage/{OUTSIDER}", token=both)[1]["metrics"]["sms"]["usage"] == 3
        assert http_get(f"{worker.base_url}/usage/{member}", token=both)[0] == 200
        status, text = http_get(f"{worker.base_url}/metrics")
        assert status == 200 and "meterwatch_events_counted_total" in text
        assert http_get(f"{worker.base_url}/internal/contract-usage/{CONTRACT}")[0] == 200
