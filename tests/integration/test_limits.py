"""Hard limits on a metric other than Fin's, end to end (CONTRACT 3.2, 3.3, 5.2, 6): an SMS limit
disables at the limit and is re-enabled by raising it, on its own ``usage.limits`` key beside
Fin's record; ``GET /limits/{id}`` shows both to the workspace's token only; the example
follower's copy of the topic agrees."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import orjson

from tests.support.kafka_io import apply_commands, produce, read_all, read_records
from tests.support.messages import event
from tests.support.worker import WorkerProcess, eventually, http_get, http_put, token_for

WS = "ws_limits"
OTHER = "ws_limits_other"
FIELDS = {"transition_id", "workspace_id", "metric", "state", "reason", "limit", "usage", "period_start",
          "period_end", "at"}  # fmt: skip


def _follower_module():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[2] / "examples" / "limits_follower.py"
    spec = importlib.util.spec_from_file_location("limits_follower", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_an_sms_limit_disables_at_the_limit_beside_fins_record(
    running_worker: WorkerProcess, deployment: dict[str, str]
) -> None:
    bootstrap = deployment["METERWATCH_KAFKA_BOOTSTRAP"]
    limits_topic = deployment["METERWATCH_TOPIC_PREFIX"] + "usage.limits"
    base = running_worker.base_url
    billing = token_for(WS, billing=True)

    async def records(expect: int) -> list:
        async def arrived() -> list | None:
            found = await read_records(bootstrap, limits_topic)
            return found if len(found) >= expect else None

        return await eventually(arrived, timeout=30)

    # Fin disabled at once by a limit of 0: its record is keyed by the workspace, as always.
    fin_limit = {"type": "limit_settings", "command_id": "fin-0", "issued_at": "2026-01-01T00:00:00Z",
                 "workspace_id": WS, "actor": {"id": "admin", "billing_permission": True},
                 "metric": "fin_resolutions", "limit": 0, "enabled": True}  # fmt: skip
    await apply_commands(deployment, [fin_limit], applied=True)
    (fin_record,) = await records(1)

    status, answer = http_put(f"{base}/usage/{WS}/settings/limits/sms", {"limit": 3}, billing)
    assert (status, answer["status"]) == (200, "applied")
    await produce(bootstrap, deployment["METERWATCH_TOPIC_PREFIX"] + "usage.events",
                  [(WS.encode(), event(WS, "sms", 1)) for _ in range(4)])  # fmt: skip
    first, disabled = await records(2)
    assert first.offset == fin_record.offset and first.value == fin_record.value

    assert fin_record.key == WS.encode()
    fin = orjson.loads(fin_record.value)
    assert set(fin) == FIELDS
    assert (fin["metric"], fin["state"], fin["reason"], fin["limit"]) == ("fin_resolutions", "disabled",
                                                                           "limit_lowered", 0)  # fmt: skip

    assert disabled.key == f"{WS}\x1fsms".encode()
    sms = orjson.loads(disabled.value)
    assert set(sms) == FIELDS
    assert (sms["workspace_id"], sms["metric"], sms["state"], sms["reason"], sms["limit"], sms["usage"]) == (
        WS, "sms", "disabled", "limit_reached", 3, 3,
    )  # fmt: skip
    assert sms["transition_id"] != fin["transition_id"]
    notices = await read_all(bootstrap, deployment["METERWATCH_TOPIC_PREFIX"] + "usage.notifications", expect=2)
    assert [(n["kind"], n.get("metric")) for n in notices] == [("fin_limit_reached", None),
                                                               ("usage_limit_reached", "sms")]  # fmt: skip

    # Raising the limit above usage enables SMS again; Fin's record stays the latest for its key.
    status, answer = http_put(f"{base}/usage/{WS}/settings/limits/sms", {"limit": 10}, billing)
    assert (status, answer["status"]) == (200, "applied")
    *_, enabled = await records(3)
    assert enabled.key == disabled.key
    assert [orjson.loads(enabled.value)[k] for k in ("state", "reason", "limit", "usage")] == [
        "enabled", "limit_raised", 10, 4,
    ]  # fmt: skip

    status, body = http_get(f"{base}/limits/{WS}", token=token_for(WS))
    assert status == 200
    assert body == {
        "workspace_id": WS,
        "limits": {
            "fin_resolutions": {"state": "disabled", "limit": 0, "enabled": True, "usage": 0},
            "sms": {"state": "enabled", "limit": 10, "enabled": True, "usage": 4},
        },
    }
    status, body = http_get(f"{base}/limits/{WS}", token=token_for(WS, metrics=["sms"]))
    assert status == 200 and set(body["limits"]) == {"sms"}
    status, body = http_get(f"{base}/limits/{WS}", token=token_for(OTHER))
    assert (status, body["error"]) == (403, "forbidden")
    assert http_get(f"{base}/limits/{WS}", token=None)[0] == 401
    sms_usage = http_get(f"{base}/usage/{WS}", token=token_for(WS))[1]["metrics"]["sms"]
    assert (sms_usage["limit"]["limit"], sms_usage["limit"]["changed_by"], sms_usage["limit_state"]) == (
        10,
        "meterwatch",
        "enabled",
    )
    status, settings = http_get(f"{base}/usage/{WS}/settings", token=billing)
    assert {m: (s["limit"], s["state"]) for m, s in settings["limits"].items()} == {
        "fin_resolutions": (0, "disabled"),
        "sms": (10, "enabled"),
    }

    # The example follower's copy of the compacted topic answers the same.
    follower = _follower_module().LimitsFollower()
    stop = asyncio.Event()
    following = asyncio.create_task(follower.follow(bootstrap, limits_topic, stop))
    await asyncio.wait_for(follower.caught_up.wait(), timeout=30)
    stop.set()
    await following
    assert not follower.is_enabled(WS, "fin_resolutions")
    assert follower.is_enabled(WS, "sms") and follower.is_enabled(WS, "whatsapp")
    assert follower.is_enabled(OTHER, "fin_resolutions")
