"""GET /limits and the settings' limits, built from a workspace's state: every metric with a
limit set (Fin's and others'), its state now, setting and usage; metrics without one left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import MappingProxyType

import pytest
from meterwatch.core.fin_limit import FinState, LimitSetting, fin_state_by_rule
from meterwatch.core.metering import MetricTally, PeriodTally, WorkspaceUsage
from meterwatch.core.periods import CALENDAR_MONTH_UTC
from meterwatch.core.workspace import WorkspaceState
from meterwatch.streams.http.usage_view import limits_document, settings_document, usage_document

WS = "ws_42"
NOW = datetime(2026, 11, 10, 12, tzinfo=UTC)
NOVEMBER = CALENDAR_MONTH_UTC.period_containing(NOW)


def limited(metric: str, usage: int, setting: LimitSetting | None) -> FinState:
    return FinState(WS, fin_state_by_rule(setting, usage), NOVEMBER, usage, setting, 1, metric)


def state(**limits: FinState) -> WorkspaceState:
    fin = limits.pop("fin_resolutions", None)
    tallies = {
        metric: MetricTally(metric, (PeriodTally(NOVEMBER, limit.usage),))
        for metric, limit in [*limits.items(), *([("fin_resolutions", fin)] if fin else [])]
    }
    return WorkspaceState(usage=WorkspaceUsage(MappingProxyType(tallies)), fin=fin, limits=MappingProxyType(limits))


def entry(state_now: str, limit: int, enabled: bool, usage: int) -> dict:
    return {"state": state_now, "limit": limit, "enabled": enabled, "usage": usage}


@pytest.mark.parametrize(
    "workspace, now, expected",
    [
        pytest.param(WorkspaceState(), NOW, {}, id="no-limit"),
        pytest.param(state(sms=limited("sms", 3, None)), NOW, {}, id="no-setting-left-out"),
        pytest.param(
            state(sms=limited("sms", 12, LimitSetting(10, True))),
            NOW,
            {"sms": entry("disabled", 10, True, 12)},
            id="sms-reached",
        ),
        pytest.param(
            state(
                fin_resolutions=limited("fin_resolutions", 2, LimitSetting(5, True)),
                whatsapp=limited("whatsapp", 9, LimitSetting(4, False)),
            ),
            NOW,
            {"fin_resolutions": entry("enabled", 5, True, 2), "whatsapp": entry("enabled", 4, False, 9)},
            id="fin-and-a-turned-off-limit",
        ),
        pytest.param(
            state(sms=limited("sms", 12, LimitSetting(10, True))),
            NOW + timedelta(days=25),
            {"sms": entry("enabled", 10, True, 0)},
            id="a-new-period-enables",
        ),
    ],
)
def test_the_limits_document(workspace: WorkspaceState, now: datetime, expected: dict) -> None:
    assert limits_document(WS, workspace, now) == {"workspace_id": WS, "limits": expected}


def test_the_settings_list_every_metrics_limit_with_who_set_it() -> None:
    setting = LimitSetting(10, True, "carol", NOW)
    workspace = state(
        fin_resolutions=limited("fin_resolutions", 1, LimitSetting(5, True)), sms=limited("sms", 12, setting)
    )
    limits = settings_document(WS, workspace, NOW)["limits"]
    assert limits["sms"] == {
        "limit": 10,
        "enabled": True,
        "state": "disabled",
        "changed_by": "carol",
        "changed_at": NOW.isoformat().replace("+00:00", "Z"),
    }
    assert list(limits) == ["fin_resolutions", "sms"]


def test_the_usage_document_shows_another_metrics_limit_beside_fins() -> None:
    workspace = state(
        fin_resolutions=limited("fin_resolutions", 1, LimitSetting(5, True)),
        sms=limited("sms", 12, LimitSetting(10, True)),
        email=limited("email", 2, None),
    )
    metrics = usage_document(WS, workspace, NOW)["metrics"]
    assert (metrics["sms"]["limit"], metrics["sms"]["limit_state"]) == (
        {"limit": 10, "enabled": True, "changed_by": None, "changed_at": None},
        "disabled",
    )
    assert (metrics["fin_resolutions"]["fin_state"], "limit_state" in metrics["fin_resolutions"]) == ("enabled", False)
    assert "limit" not in metrics["email"]
