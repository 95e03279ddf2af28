"""Two workers in one consumer group share the partitions, and either one answers for any
workspace (the request is routed to the partition's owner)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime

from tests.support.kafka_io import produce
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get, metric_samples

WORKSPACES = [f"ws_route_{i}" for i in range(16)]


async def test_either_worker_answers_for_every_workspace(
    two_workers: list[WorkerProcess], deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    expected: Counter[str] = Counter()
    messages = []
    for index in range(400):
        workspace = WORKSPACES[index % len(WORKSPACES)]
        quantity = 1 + index % 3
        expected[workspace] += quantity
        event = {
            "event_id": uuid.uuid4().hex,
            "workspace_id": workspace,
            "metric": "whatsapp",
            "quantity": quantity,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        messages.append((workspace.encode(), event))
    await produce(bootstrap, topic, messages)

    def answers_everywhere() -> bool:
        for worker in two_workers:
            for workspace in WORKSPACES:
                status, body = http_get(f"{worker.base_url}/usage/{workspace}")
                if status != 200 or body["metrics"].get("whatsapp", {}).get("usage") != expected[workspace]:
                    return False
        return True

    await eventually(answers_everywhere, timeout=60, interval=0.5)
    # Both workers took part: each owns some of the workspace inbox's partitions, the ones whose
    # workspaces it counts (and whose lag it reports).
    inbox = deployment["METERWATCH_TOPIC_PREFIX"] + deployment["METERWATCH_APP_ID"] + "-workspace-inbox"
    owned = [
        {
            labels["partition"]
            for labels, _ in metric_samples(worker, "meterwatch_consumer_lag_messages")
            if labels["topic"] == inbox
        }
        for worker in two_workers
    ]
    assert all(owned) and not owned[0] & owned[1], owned


async def test_one_of_two_workers_sigkilled_and_restarted_mid_stream_counts_stay_exact(
    two_workers: list[WorkerProcess], deployment: dict[str, str]
) -> None:
    """The partitions the restarted worker takes back are rebuilt from their changelogs to their
    very last record, whatever end the broker reports, and counting goes on from there."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events"
    workspaces = [f"ws_kill_{i}" for i in range(8)]
    events = [event(workspaces[i % len(workspaces)], "messages_sent") for i in range(4000)]
    chunks = [events[i : i + 200] for i in range(0, len(events), 200)]
    for chunk in chunks[:8]:
        await produce(bootstrap, topic, [(e["workspace_id"].encode(), e) for e in chunk])
        await asyncio.sleep(0.5)
    two_workers[1].kill()
    await asyncio.sleep(2)
    two_workers[1].start()
    for chunk in chunks[8:]:
        await produce(bootstrap, topic, [(e["workspace_id"].encode(), e) for e in chunk])
        await asyncio.sleep(0.5)

    expected = dict.fromkeys(workspaces, 500)

    def shown() -> dict[str, int]:
        found: dict[str, int] = {}
        for worker in two_workers:
            for workspace in workspaces:
                status, body = http_get(f"{worker.base_url}/usage/{workspace}")
                if status == 200 and "messages_sent" in body["metrics"]:
                    found[workspace] = body["metrics"]["messages_sent"]["usage"]
        return found

    await eventually(lambda: shown() == expected, timeout=120, interval=1)
    await asyncio.sleep(3)  # a second count of anything would show by now
    assert shown() == expected


async def test_a_contract_id_of_any_characters_reaches_its_contract_from_every_worker(
    two_workers: list[WorkerProcess], deployment: dict[str, str]
) -> None:
    """A member's ``/usage`` asks the contract's owner for the contract's sums: the id is one
    path segment there, whatever it holds."""
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    prefix = deployment["METERWATCH_TOPIC_PREFIX"]
    members = [f"ws_odd_{i}" for i in range(8)]
    contracts = ["acme/eu", "../../table/workspaces/ws_odd_0", "q?x=1#frag", "%2F..%2F"]
    for index, contract in enumerate(contracts):
        command = {
            "type": "subscription",
            "command_id": f"sub-odd-{index}",
            "issued_at": datetime.now(UTC).isoformat(),
            "contract_id": contract,
            "workspace_ids": members[index * 2 : index * 2 + 2],
            "billing_anchor": "2026-01-01",
            "timezone": "UTC",
            "currency": "EUR",
            "prices": {"sms": {"unit_price": "0.05", "included": 100}},
        }
        await produce(bootstrap, prefix + "usage.control", [(contract.encode(), command)])
    await produce(bootstrap, prefix + "usage.events", [(m.encode(), event(m, "sms", 3)) for m in members])

    def contract_usage_everywhere() -> bool:
        for worker in two_workers:
            for index, member in enumerate(members):
                status, body = http_get(f"{worker.base_url}/usage/{member}")
                if status != 200 or body["contract_id"] != contracts[index // 2]:
                    return False
                if (body["metrics"].get("sms") or {}).get("contract") != {"usage": 6, "included": 100}:
                    return False
        return True

    await eventually(contract_usage_everywhere, timeout=60, interval=0.5)


async def test_faust_table_and_router_views_are_not_served(two_workers: list[WorkerProcess]) -> None:
    for worker in two_workers:
        for path in ("/router/", "/table/workspaces/", "/table/workspaces/ws_route_0"):
            status, _ = http_get(f"{worker.base_url}{path}")
            assert status == 404, path
        assert http_get(f"{worker.base_url}/health")[0] == 200
