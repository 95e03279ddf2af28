"""The operations files (Grafana dashboard, Prometheus alert rules, metrics doc) against the code.

Every metric name a PromQL expression mentions must be one meterwatch exports on the wire, from
`streams/metrics.py` alone; the files must be what Grafana and Prometheus load. With `promtool`
on the PATH (Debian: `apt-get install prometheus`) the expressions are also parsed by Prometheus
itself and the alert rules run against synthetic series; without it those tests are skipped.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from meterwatch.streams.metrics import Metrics
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

yaml = pytest.importorskip("yaml", reason="PyYAML is in the dev extra")

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "meterwatch-dashboard.json"
RULES = ROOT / "ops" / "prometheus" / "meterwatch-alerts.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
SEVERITIES = {"critical", "warning", "info"}
# Strings (label values, regexes) are dropped before looking for metric names: `job=~"meterwatch.*"`
# names a job, not a metric.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'" + r"|`[^`]*`")
_METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])(?:meterwatch|process)_[A-Za-z0-9_:]*")
_RATE_ARGUMENT = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*(meterwatch_[A-Za-z0-9_:]*)")
_GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


# ------------------------------------------------------------------ what meterwatch exports


def fresh_metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@functools.cache
def families() -> dict[str, str]:
    """Family name -> type, from each collector's metadata (a labelled metric has no samples yet)."""
    metrics = fresh_metrics()
    return {family.name: family.type for family in metrics.registry.collect()}


def exported_from_types() -> set[str]:
    return {name + suffix for name, kind in families().items() for suffix in SUFFIXES[kind]}


def exported_on_the_wire() -> set[str]:
    """Sample names of `generate_latest` after one label set of every labelled metric was used."""
    metrics = fresh_metrics()
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:  # noqa: SLF001 - no public accessor
            metric.labels(*("x" for _ in metric._labelnames))  # noqa: SLF001
    text = generate_latest(metrics.registry).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


EXPORTED = exported_from_types() | exported_on_the_wire()


def family_of(sample_name: str) -> tuple[str, str] | None:
    for name, kind in families().items():
        if any(sample_name == name + suffix for suffix in SUFFIXES[kind]):
            return name, kind
    return None


# ------------------------------------------------------------------ the files


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text(encoding="utf-8"))


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside it
    return found


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    return [
        (f"panel {panel['id']} {panel.get('title')!r} target {target.get('refId')}", target["expr"])
        for panel in all_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


def templating_queries() -> list[tuple[str, str]]:
    queries = []
    for variable in load_dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        queries.append((f"variable {variable['name']}", query["query"] if isinstance(query, dict) else query))
    return queries


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def rule_expressions() -> list[tuple[str, str]]:
    return [(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]) for rule in rules()]


def metric_names(expr: str) -> set[str]:
    return set(_METRIC_NAME.findall(_STRING.sub('""', expr)))


def check_brackets(expr: str) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack and stack[-1] == pairs[char], f"unbalanced {char!r} in {expr!r}"
            stack.pop()
    assert not stack, f"unclosed {stack} in {expr!r}"


def as_plain_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for Prometheus' own parser."""
    durations = {"__rate_interval", "__interval", "__range"}
    return _GRAFANA_VARIABLE.sub(lambda m: "5m" if m.group(1) in durations else ".*", expr)


# ------------------------------------------------------------------ the exported set itself


def test_the_exported_names_seen_two_ways_agree() -> None:
    # Metadata and the wire must tell the same story, or the reference set below would be wrong.
    ignore_created = {name for name in EXPORTED if name.endswith("_created")}
    assert exported_from_types() - ignore_created == exported_on_the_wire() - ignore_created
    assert "meterwatch_events_counted_total" in EXPORTED
    assert "meterwatch_batch_messages_bucket" in EXPORTED
    assert "meterwatch_consumer_lag_messages" in EXPORTED
    assert "meterwatch_events_counted" not in EXPORTED  # a counter is `_total` on the wire


def test_the_name_extraction_ignores_strings_and_keeps_suffixes() -> None:
    expr = 'rate(meterwatch_a_total{job=~"meterwatch_x"}[5m]) / meterwatch_b_bucket + up{job="meterwatch"}'
    assert metric_names(expr) == {"meterwatch_a_total", "meterwatch_b_bucket"}


# ------------------------------------------------------------------ every reference exists


ALL_QUERIES = dashboard_expressions() + templating_queries() + rule_expressions()


@pytest.mark.parametrize(("where", "expr"), ALL_QUERIES, ids=[where for where, _ in ALL_QUERIES])
def test_every_referenced_metric_is_exported(where: str, expr: str) -> None:
    check_brackets(expr)
    names = metric_names(expr)
    unknown = sorted(names - EXPORTED)
    assert not unknown, f"{where} uses {unknown}, which streams/metrics.py does not export"


def test_every_expression_references_a_meterwatch_metric_or_up() -> None:
    for where, expr in dashboard_expressions() + rule_expressions():
        assert metric_names(expr) or re.search(r"\bup\b", expr), f"{where} reads no meterwatch metric: {expr!r}"


def test_rate_and_increase_only_take_counters_and_histogram_series() -> None:
    for where, expr in dashboard_expressions() + rule_expressions():
        for name in _RATE_ARGUMENT.findall(_STRING.sub('""', expr)):
            family = family_of(name)
            assert family is not None, f"{where}: {name} is not exported"
            assert family[1] in {"counter", "histogram"}, f"{where}: rate/increase of the gauge {name}"
            assert not name.endswith("_created"), f"{where}: rate of {name}"


def test_histogram_quantile_reads_buckets() -> None:
    for where, expr in dashboard_expressions() + rule_expressions():
        if "histogram_quantile" in expr:
            assert "_bucket" in expr, f"{where}: histogram_quantile without a _bucket series"
            assert re.search(r"by \([^)]*\ble\b", expr), f"{where}: histogram_quantile must keep `le`"


def test_every_exported_family_is_on_the_dashboard_and_in_the_doc() -> None:
    on_dashboard = set().union(*(metric_names(expr) for _, expr in dashboard_expressions()))
    doc = METRICS_DOC.read_text(encoding="utf-8")
    for name, kind in families().items():
        wire = {name + suffix for suffix in SUFFIXES[kind] if suffix != "_created"}
        assert wire & on_dashboard, f"no dashboard panel shows {name}"
        main = name + ("_total" if kind == "counter" else "")
        assert f"`{main}`" in doc, f"docs/metrics.md does not describe {main}"


# ------------------------------------------------------------------ the rules file


def test_rules_are_prometheus_alerting_rules() -> None:
    document = load_rules()
    assert set(document) == {"groups"}
    names = set()
    for group in document["groups"]:
        assert group["name"] and group["rules"], group
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert rule["alert"] and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"]), rule
            assert rule["alert"] not in names, f"duplicate alert {rule['alert']}"
            names.add(rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
            assert re.fullmatch(r"\d+[smh]", str(rule["for"])), f"{rule['alert']}: for: {rule['for']!r}"
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert rule["annotations"]["summary"].strip(), rule["alert"]
            description = rule["annotations"].get("description", "")
            assert "Runbook: ops/README.md" in description, f"{rule['alert']}: no runbook hint"


def test_the_rules_cover_what_the_brief_asks() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in rules()}
    wanted = {
        "MeterwatchConsumerLagHigh": "meterwatch_consumer_lag_messages",
        "MeterwatchDeadLetterRatioHigh": "meterwatch_events_rejected_total",
        "MeterwatchProcessingStalled": "meterwatch_events_counted_total",
        "MeterwatchMailBacklogStuck": "meterwatch_mail_backlog",
        "MeterwatchEmailsFailing": "meterwatch_emails_failed_total",
        "MeterwatchPipelineLatencyHigh": "meterwatch_pipeline_latency_seconds_bucket",
        "MeterwatchFrequentRebalances": "meterwatch_rebalances_total",
        "MeterwatchWorkerDown": "up",
    }
    for alert, metric in wanted.items():
        assert alert in by_name, f"missing alert {alert}"
        assert re.search(rf"\b{metric}\b", by_name[alert]), f"{alert} does not read {metric}"
    assert re.search(r"\)\s*>\s*1\s*$", by_name["MeterwatchPipelineLatencyHigh"].strip()), "p99 > 1 s"
    assert "0.99" in by_name["MeterwatchPipelineLatencyHigh"]


def test_every_rule_is_in_the_runbook() -> None:
    readme = (ROOT / "ops" / "README.md").read_text(encoding="utf-8")
    for rule in rules():
        assert f"### {rule['alert']}" in readme, f"ops/README.md has no runbook section for {rule['alert']}"


# ------------------------------------------------------------------ the dashboard


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["title"] and dashboard["uid"]
    assert dashboard.get("id") is None  # importable into any Grafana
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= set(variables)
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"


def test_panel_ids_are_unique_and_every_panel_has_a_target() -> None:
    panels = all_panels(load_dashboard())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in panels:
        if panel["type"] == "row":  # a row is a heading, not a query
            continue
        assert panel.get("targets"), f"panel {panel['id']} {panel.get('title')!r} has no target"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], int] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['id']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


def test_panel_queries_honour_the_job_and_instance_variables() -> None:
    for where, expr in dashboard_expressions():
        for selector in re.findall(r"(?:(?:meterwatch|process)_[A-Za-z0-9_:]*|\bup)\{([^}]*)\}", expr):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, f"{where}: {expr}"
        assert not re.search(r"(?:(?:meterwatch|process)_[A-Za-z0-9_:]*|\bup)(?![A-Za-z0-9_:{])", expr), (
            f"{where}: bare {expr}"
        )


# ------------------------------------------------------------------ Prometheus' own checks


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    recording = [
        {"record": f"meterwatch_dashboard:check_{index}", "expr": as_plain_promql(expr)}
        for index, (_, expr) in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}), encoding="utf-8")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _alert(name: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"severity": _severity(name), **labels}}


def _severity(alert: str) -> str:
    return next(rule["labels"]["severity"] for rule in rules() if rule["alert"] == alert)


W = 'job="meterwatch", instance="w1:6066"'
LAG_EVENTS = f'meterwatch_consumer_lag_messages{{{W}, topic="usage.events", partition="0"}}'
COUNTED = f'meterwatch_events_counted_total{{{W}, metric="sms"}}'
REJECTED = f'meterwatch_events_rejected_total{{{W}, reason="unknown_metric"}}'


def _latency_buckets(all_below_one: bool) -> list[dict[str, str]]:
    # 10 events a minute; either every one under 0.5 s, or every one between 1 and 2.5 s.
    series = []
    for le in ("0.5", "1.0", "2.5", "+Inf"):
        under = le in ("2.5", "+Inf") or (all_below_one and le in ("0.5", "1.0"))
        values = "0+10x40" if under else "0x40"
        series.append({"series": f'meterwatch_pipeline_latency_seconds_bucket{{{W}, le="{le}"}}', "values": values})
    return series


SCENARIOS: list[dict[str, Any]] = [
    {
        "name": "a worker that does not answer",
        "input_series": [{"series": f"up{{{W}}}", "values": "1 1 0x10"}],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "MeterwatchWorkerDown", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "MeterwatchWorkerDown",
                "exp_alerts": [_alert("MeterwatchWorkerDown", job="meterwatch", instance="w1:6066")],
            },
        ],
    },
    {
        "name": "input waiting and nothing counted",
        "input_series": [
            {"series": LAG_EVENTS, "values": "50+0x30"},
            {"series": COUNTED, "values": "100+0x30"},
        ],
        "alert_rule_test": [
            {"eval_time": "3m", "alertname": "MeterwatchProcessingStalled", "exp_alerts": []},
            {
                "eval_time": "20m",
                "alertname": "MeterwatchProcessingStalled",
                "exp_alerts": [_alert("MeterwatchProcessingStalled", job="meterwatch")],
            },
        ],
    },
    {
        "name": "input waiting but counting goes on",
        "input_series": [
            {"series": LAG_EVENTS, "values": "50+0x30"},
            {"series": COUNTED, "values": "100+60x30"},
        ],
        "alert_rule_test": [{"eval_time": "20m", "alertname": "MeterwatchProcessingStalled", "exp_alerts": []}],
    },
    {
        "name": "idle transactional inbox: lag rests at the commit marker",
        "input_series": [
            {
                "series": f'meterwatch_consumer_lag_messages{{{W}, topic="meterwatch-workspace-inbox", partition="{p}"}}',
                "values": "1+0x30",
            }
            for p in range(8)
        ]
        + [{"series": COUNTED, "values": "100+0x30"}],
        "alert_rule_test": [{"eval_time": "25m", "alertname": "MeterwatchProcessingStalled", "exp_alerts": []}],
    },
    {
        "name": "lag high and growing, with a stale copy on the partition's previous worker",
        "input_series": [
            {"series": LAG_EVENTS, "values": "20000+1000x40"},
            {
                "series": 'meterwatch_consumer_lag_messages{job="meterwatch", instance="w2:6066", '
                'topic="usage.events", partition="0"}',
                "values": "20000+0x40",
            },
        ],
        "alert_rule_test": [
            {
                "eval_time": "30m",
                "alertname": "MeterwatchConsumerLagHigh",
                "exp_alerts": [_alert("MeterwatchConsumerLagHigh", job="meterwatch", topic="usage.events")],
            }
        ],
    },
    {
        "name": "lag high but shrinking",
        "input_series": [{"series": LAG_EVENTS, "values": "60000-1000x40"}],
        "alert_rule_test": [{"eval_time": "30m", "alertname": "MeterwatchConsumerLagHigh", "exp_alerts": []}],
    },
    {
        "name": "half the events dead-lettered",
        "input_series": [
            {"series": REJECTED, "values": "0+60x40"},
            {"series": COUNTED, "values": "0+60x40"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "35m",
                "alertname": "MeterwatchDeadLetterRatioHigh",
                "exp_alerts": [_alert("MeterwatchDeadLetterRatioHigh", job="meterwatch")],
            }
        ],
    },
    {
        "name": "every event dead-lettered since start (no counted series at all)",
        "input_series": [{"series": REJECTED, "values": "0+60x40"}],
        "alert_rule_test": [
            {
                "eval_time": "35m",
                "alertname": "MeterwatchDeadLetterRatioHigh",
                "exp_alerts": [_alert("MeterwatchDeadLetterRatioHigh", job="meterwatch")],
            }
        ],
    },
    {
        "name": "a trickle of dead letters among many counted",
        "input_series": [
            {"series": REJECTED, "values": "0+1x40"},
            {"series": COUNTED, "values": "0+6000x40"},
        ],
        "alert_rule_test": [{"eval_time": "35m", "alertname": "MeterwatchDeadLetterRatioHigh", "exp_alerts": []}],
    },
    {
        "name": "counting takes 1 to 2.5 s",
        "input_series": _latency_buckets(all_below_one=False),
        "alert_rule_test": [
            {
                "eval_time": "20m",
                "alertname": "MeterwatchPipelineLatencyHigh",
                "exp_alerts": [_alert("MeterwatchPipelineLatencyHigh", job="meterwatch")],
            }
        ],
    },
    {
        "name": "counting under half a second",
        "input_series": _latency_buckets(all_below_one=True),
        "alert_rule_test": [{"eval_time": "20m", "alertname": "MeterwatchPipelineLatencyHigh", "exp_alerts": []}],
    },
    {
        "name": "a mail stuck in SMTP retries",
        "input_series": [
            {"series": f"meterwatch_mail_backlog{{{W}}}", "values": "1+0x30"},
            {"series": f"meterwatch_email_retries_total{{{W}}}", "values": "0+2x30"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "20m",
                "alertname": "MeterwatchMailBacklogStuck",
                "exp_alerts": [_alert("MeterwatchMailBacklogStuck", job="meterwatch", instance="w1:6066")],
            }
        ],
    },
    {
        "name": "mail flowing without retries",
        "input_series": [
            {"series": f"meterwatch_mail_backlog{{{W}}}", "values": "1+0x30"},
            {"series": f"meterwatch_email_retries_total{{{W}}}", "values": "0+0x30"},
        ],
        "alert_rule_test": [{"eval_time": "20m", "alertname": "MeterwatchMailBacklogStuck", "exp_alerts": []}],
    },
    {
        "name": "most mails refused",
        "input_series": [
            {"series": f'meterwatch_emails_failed_total{{{W}, reason="refused"}}', "values": "0+5x60"},
            {"series": f"meterwatch_emails_sent_total{{{W}}}", "values": "0+1x60"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "50m",
                "alertname": "MeterwatchEmailsFailing",
                "exp_alerts": [_alert("MeterwatchEmailsFailing", job="meterwatch")],
            },
            {"eval_time": "50m", "alertname": "MeterwatchEmailCompositionFailed", "exp_alerts": []},
        ],
    },
    {
        "name": "a worker rebalancing every few minutes",
        "input_series": [{"series": f"meterwatch_rebalances_total{{{W}}}", "values": "0+1x60"}],
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "MeterwatchFrequentRebalances", "exp_alerts": []},
            {
                "eval_time": "55m",
                "alertname": "MeterwatchFrequentRebalances",
                "exp_alerts": [_alert("MeterwatchFrequentRebalances", job="meterwatch")],
            },
        ],
    },
    {
        "name": "a rolling deploy: a burst of rebalances, then quiet",
        "input_series": [{"series": f"meterwatch_rebalances_total{{{W}}}", "values": "0+1x8 8+0x60"}],
        "alert_rule_test": [
            {"eval_time": f"{minutes}m", "alertname": "MeterwatchFrequentRebalances", "exp_alerts": []}
            for minutes in (10, 20, 30, 40, 50)
        ],
    },
]


@needs_promtool
def test_the_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    # promtool compares annotations too; the test is about when rules fire, so it runs a copy without them.
    document = load_rules()
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules_copy = tmp_path / "rules.yml"
    rules_copy.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    tests = tmp_path / "tests.yml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(rules_copy)],
                "evaluation_interval": "1m",
                "tests": [{"interval": "1m", **scenario} for scenario in SCENARIOS],
            },
            sort_keys=False,
        ),
        encoding="utf-8",
    )
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
