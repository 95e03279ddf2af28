"""The example consumer of usage.limits: the latest record per key is the state, no record is
enabled, a tombstone forgets its key; its keys are the ones meterwatch publishes under."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from meterwatch.models.outputs import limit_key

_PATH = Path(__file__).resolve().parents[2] / "examples" / "limits_follower.py"
_SPEC = importlib.util.spec_from_file_location("limits_follower", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
follower_module = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(follower_module)
LimitsFollower = follower_module.LimitsFollower

METRICS = ["fin_resolutions", "sms", "whatsapp"]


def record(workspace_id: str, metric: str, state: str) -> tuple[bytes, bytes]:
    value = {"transition_id": "t", "workspace_id": workspace_id, "metric": metric, "state": state}
    return limit_key(workspace_id, metric).encode(), orjson.dumps(value)


@pytest.mark.parametrize(
    "records, expected",
    [
        pytest.param([], {"fin_resolutions": True, "sms": True}, id="no-record-is-enabled"),
        pytest.param([("sms", "disabled")], {"fin_resolutions": True, "sms": False}, id="sms-alone"),
        pytest.param([("fin_resolutions", "disabled")], {"fin_resolutions": False, "sms": True}, id="fin-alone"),
        pytest.param([("sms", "disabled"), ("sms", "enabled")], {"sms": True}, id="latest-wins"),
    ],
)
def test_the_latest_record_per_key_is_the_state(records: list[tuple[str, str]], expected: dict[str, bool]) -> None:
    follower = LimitsFollower()
    for metric, state in records:
        follower.apply(*record("ws_42", metric, state))
    assert {metric: follower.is_enabled("ws_42", metric) for metric in expected} == expected
    assert follower.is_enabled("ws_43", "sms")


def test_a_tombstone_forgets_its_key_and_a_colon_in_a_workspace_id_names_no_metric() -> None:
    follower = LimitsFollower()
    follower.apply(*record("ws_42", "sms", "disabled"))
    follower.apply(*record("ws_42:sms", "fin_resolutions", "disabled"))
    assert not follower.is_enabled("ws_42", "sms") and not follower.is_enabled("ws_42:sms", "fin_resolutions")
    follower.apply(limit_key("ws_42", "sms").encode(), None)
    assert follower.is_enabled("ws_42", "sms") and not follower.is_enabled("ws_42:sms", "fin_resolutions")


def test_the_example_keys_records_as_meterwatch_does() -> None:
    for metric in METRICS:
        assert follower_module.limit_key("ws:42", metric) == limit_key("ws:42", metric)


@given(st.lists(st.tuples(st.sampled_from(["a", "a:sms", "b"]), st.sampled_from(METRICS), st.booleans())))
def test_any_sequence_of_records_leaves_each_pair_at_its_latest(changes: list[tuple[str, str, bool]]) -> None:
    follower, latest = LimitsFollower(), {}
    for workspace_id, metric, enabled in changes:
        follower.apply(*record(workspace_id, metric, "enabled" if enabled else "disabled"))
        latest[(workspace_id, metric)] = enabled
    for workspace_id in ("a", "a:sms", "b"):
        for metric in METRICS:
            assert follower.is_enabled(workspace_id, metric) == latest.get((workspace_id, metric), True)
