"""monitoring/: Prometheus alert rules (promtool check + unit tests) and the Grafana dashboard,
whose queries may only use metrics the code exports."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "homefeed.json"
# BentoML's own HTTP metrics on the ranker's /metrics (test_service.py checks them live).
BENTOML_HTTP = {"bentoml_service_request_duration_seconds": "histogram",
                "bentoml_service_request_total": "counter",
                "bentoml_service_request_in_progress": "gauge"}
PROMETHEUS_BUILTIN = {"up"}
METRIC = re.compile(r"\b((?:homefeed|bentoml)_[a-z0-9_]+|up)\b(?!\s*\()")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (`make setup` installs Debian's prometheus package as root)")
    return path


def test_alert_rules_pass_promtool_check():
    result = subprocess.run([promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    result = subprocess.run([promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_on_bad_series_and_not_on_healthy_ones():
    result = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _expand(name: str, kind: str) -> set[str]:
    """The series names a metric exposes (prometheus_client's naming)."""
    if kind == "counter":
        return {name if name.endswith("_total") else name + "_total"}
    if kind == "histogram":
        return {name + s for s in ("_bucket", "_sum", "_count")}
    return {name}


def stream_metric_names() -> set[str]:
    """Series names of the consumer's metrics, from the prometheus_client objects themselves."""
    from homefeed.stream import metrics

    names: set[str] = set()
    for value in vars(metrics).values():
        describe = getattr(value, "describe", None)
        if callable(describe) and value.__class__.__module__.startswith("prometheus_client"):
            for family in describe():
                names |= _expand(family.name, family.type)
    return names


def service_metric_names() -> set[str]:
    """Series names of the metrics bento/service.py declares (bentoml.metrics.<Type>(name=...))."""
    names: set[str] = set()
    tree = ast.parse((ROOT / "bento" / "service.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                ast.unparse(node.func.value) == "bentoml.metrics":
            name = next(k.value.value for k in node.keywords if k.arg == "name")
            names |= _expand(name, node.func.attr.lower())
    return names


def exported_metric_names() -> set[str]:
    names = stream_metric_names() | service_metric_names() | PROMETHEUS_BUILTIN
    for name, kind in BENTOML_HTTP.items():
        names |= _expand(name, kind)
    return names


def used_queries() -> dict[str, str]:
    """{where: PromQL} for every dashboard target and alert rule."""
    queries = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            queries[f"dashboard panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule.get('alert') or rule.get('record')}"] = rule["expr"]
    return queries


def used_metric_names() -> set[str]:
    return {m for expr in used_queries().values() for m in METRIC.findall(expr)}


def test_dashboard_and_alerts_use_only_exported_metrics():
    exported = exported_metric_names()
    for where, expr in used_queries().items():
        names = set(METRIC.findall(expr))
        assert names, f"{where}: no homefeed/bentoml metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported by the code"
    # the list: lag, freshness p99, dead letters, /rank p99, degraded answers, Redis errors
    used = used_metric_names()
    for name in ("homefeed_stream_consumer_lag", "homefeed_stream_freshness_seconds_bucket",
                 "homefeed_stream_dead_lettered_total", "bentoml_service_request_duration_seconds_bucket",
                 "homefeed_degraded_answers_total", "homefeed_redis_errors_total", "homefeed_redis_up"):
        assert name in used, name
    # the unit tests feed the rules series that exist too
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    series = {s["series"].split("{")[0] for t in tests for s in t["input_series"]}
    assert series <= exported, sorted(series - exported)


def test_dashboard_is_provisioned_with_its_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])} == {uid}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "homefeed"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert "./monitoring/prometheus:/etc/prometheus:ro" in compose["prometheus"]["volumes"]
    assert all(port.startswith("127.0.0.1:") for s in ("prometheus", "grafana") for port in compose[s]["ports"])
    scraped = {job["job_name"] for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    assert {"homefeed-consumer", "homefeed-ranker"} <= scraped
