"""With ``METERWATCH_COMMAND_KEYS`` set, only a command signed by a known key, keyed by what it is
about, fresh and never applied before changes anything; every other one is answered
``rejected`` with its reason and changes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson
from meterwatch.models.signing import signature_header

from tests.conftest import healthy_worker
from tests.support.kafka_io import produce, read_all
from tests.support.messages import event
from tests.support.worker import eventually, http_get

KEY_ID = "settings-2026"
SECRET = b"the-settings-service-signing-key-0123456789"
WS = "ws_signed"
CONTRACT = "c_signed"


def alert(threshold: int, *, issued_at: datetime | None = None, billing_permission: bool = True) -> dict:
    return {
        "type": "alert_settings",
        "command_id": f"cmd-{uuid.uuid4().hex[:10]}",
        "issued_at": (issued_at or datetime.now(UTC)).isoformat(),
        "workspace_id": WS,
        "actor": {"id": "alice", "billing_permission": billing_permission},
        "metric": "sms",
        "threshold": threshold,
        "early_warnings": False,
        "enabled": True,
    }


def signed(command: dict, *, key_id: str = KEY_ID, secret: bytes = SECRET, key: str | None = None) -> tuple:
    raw = orjson.dumps(command)
    return (
        (key or command.get("workspace_id") or command["contract_id"]).encode(),
        raw,
        [signature_header(raw, key_id, secret)],
    )


async def test_only_signed_fresh_new_commands_change_anything(deployment: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**deployment, "METERWATCH_COMMAND_KEYS": f"old-key:{'o' * 40},{KEY_ID}:{SECRET.decode()}"}
    bootstrap, prefix = env["METERWATCH_KAFKA_BOOTSTRAP"], env["METERWATCH_TOPIC_PREFIX"]
    control, results_topic = prefix + "usage.control", prefix + "usage.command-results"

    def threshold() -> int | None:
        status, body = http_get(f"{worker.base_url}/usage/{WS}")
        return ((body["metrics"].get("sms") or {}).get("alert") or {}).get("threshold") if status == 200 else None

    async def results() -> dict[str, dict]:
        return {r["command_id"]: r for r in await read_all(bootstrap, results_topic, timeout=2)}

    with healthy_worker(env, tmp_path / "worker.log") as worker:
        await produce(bootstrap, prefix + "usage.events", [(WS.encode(), event(WS, "sms", 5))])
        first = alert(1000)
        await produce(bootstrap, control, [signed(first)])
        await eventually(lambda: threshold() == 1000, timeout=60)

        tampered = alert(10)
        raw = orjson.dumps(tampered)
        header = signature_header(raw, KEY_ID, SECRET)
        raw_tampered = raw.replace(b'"threshold":10', b'"threshold":11')
        stale = alert(20, issued_at=datetime.now(UTC) - timedelta(minutes=10))
        future = alert(30, issued_at=datetime.now(UTC) + timedelta(minutes=10))
        no_permission = alert(40, billing_permission=False)
        unsigned = alert(50)
        wrong_secret = alert(60)
        unknown_key = alert(70)
        wrong_key = alert(80)
        rejected = {
            unsigned["command_id"]: "unsigned",
            tampered["command_id"]: "bad_signature",
            wrong_secret["command_id"]: "bad_signature",
            unknown_key["command_id"]: "unknown_key",
            stale["command_id"]: "stale",
            future["command_id"]: "stale",
            wrong_key["command_id"]: "key_mismatch",
            no_permission["command_id"]: "no_billing_permission",
        }
        await produce(
            bootstrap,
            control,
            [
                (WS.encode(), orjson.dumps(unsigned)),
                (WS.encode(), raw_tampered, [header]),
                signed(wrong_secret, secret=b"not-the-settings-service-key-0123456789"),
                signed(unknown_key, key_id="retired-key"),
                signed(stale),
                signed(future),
                signed(wrong_key, key="ws_someone_else"),
                signed(no_permission),
                signed(first),  # the very first command again, within its freshness window
            ],
        )

        async def all_answered() -> dict[str, dict] | None:
            found = await results()
            return found if set(rejected) <= set(found) else None

        found = await eventually(all_answered, timeout=60)
        for command_id, code in rejected.items():
            assert found[command_id]["status"] == "rejected", found[command_id]
            assert found[command_id]["reason"].startswith(f"{code}:"), found[command_id]
        replays = [
            r for r in await read_all(bootstrap, results_topic, timeout=2) if r["command_id"] == first["command_id"]
        ]
        assert [r["status"] for r in replays] == ["applied", "rejected"], replays
        assert replays[1]["reason"].startswith("replayed:")
        assert threshold() == 1000  # none of them changed anything

        # A new signed command, by the key published first: applied.
        later = alert(2000)
        await produce(bootstrap, control, [signed(later, key_id="old-key", secret=b"o" * 40)])
        await eventually(lambda: threshold() == 2000, timeout=60)
        shown = http_get(f"{worker.base_url}/usage/{WS}")[1]["metrics"]["sms"]["alert"]
        assert shown["changed_by"] == "alice" and shown["changed_at"] is not None

        # A signed subscription applies once; its replay is refused.
        subscription = {
            "type": "subscription",
            "command_id": f"sub-{uuid.uuid4().hex[:8]}",
            "issued_at": datetime.now(UTC).isoformat(),
            "contract_id": CONTRACT,
            "workspace_ids": [WS],
            "billing_anchor": "2026-01-01",
            "timezone": "UTC",
            "currency": "EUR",
            "prices": {"sms": {"unit_price": "0.05", "included": 100}},
        }
        await produce(bootstrap, control, [signed(subscription), (CONTRACT.encode(), orjson.dumps(subscription))])
        await produce(bootstrap, control, [signed(subscription)])

        async def subscription_answers() -> list[dict] | None:
            answers = [
                r
                for r in await read_all(bootstrap, results_topic, timeout=2)
                if r["command_id"] == subscription["command_id"]
            ]
            return answers if len(answers) >= 3 else None

        answers = await eventually(subscription_answers, timeout=60)
        assert sorted(a["status"] + ":" + (a.get("reason") or "").split(":")[0] for a in answers) == [
            "applied:",
            "rejected:replayed",
            "rejected:unsigned",
        ], answers
        await eventually(
            lambda: http_get(f"{worker.base_url}/usage/{WS}")[1].get("contract_id") == CONTRACT, timeout=30
        )
