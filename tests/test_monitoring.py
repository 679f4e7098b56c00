"""docker/monitoring/: promtool checks the Prometheus config and the alert rules and runs their unit tests; the
Grafana dashboard and provisioning agree with each other and with compose; and a real Prometheus, configured
with the shipped files, scrapes a local exposition of the served metrics, accepts every dashboard query, and
fires the alerts (each validator is also shown a broken copy, so a pass means something)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from shelfml.benchmarks.prometheus import (ALERTS_YML, DASHBOARD_JSON, LOOPBACK, MONITORING, PROMETHEUS_YML,
                                           PrometheusError, PrometheusProcess, dashboard_panels, dashboard_queries,
                                           find_binary, rules_for_test, scrape_config_for)

DOCKER = MONITORING.parent
GRAFANA = MONITORING / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "shelfml.yml"
ALERTS_TEST_YML = MONITORING / "alerts_test.yml"
ALERT_NAMES = {"ShelfmlDrift", "ShelfmlErrorRate", "ShelfmlHighLatencyP99", "ShelfmlServerDown"}
# The metrics the served models and Triton export: the dashboard must show each of them.
SERVED_METRICS = ["shelfml_requests_total", "shelfml_rows_total", "shelfml_stage_seconds_bucket",
                  "shelfml_top_level_total", "shelfml_abstain_total", "shelfml_brand_source_total",
                  "shelfml_confidence_bucket", "shelfml_price_bucket", "shelfml_input_chars_bucket",
                  "shelfml_drift_jsd", "shelfml_drift_window_rows", "shelfml_taxonomy_info",
                  "shelfml_model_version_info", "nv_inference_queue_duration_us", "nv_inference_request_success"]


def binary(name: str) -> str:
    path = find_binary(name)
    if not path:
        pytest.skip(f"{name} is not installed (apt-get install prometheus: Debian's package has both binaries)")
    return path


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path (relative paths resolved against docker/, as compose does) of its binds."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        found[target] = (DOCKER / source).resolve()
    return found


# ---------------------------------------------------------------------------------------------
# promtool

def test_promtool_check_config():
    """prometheus.yml is valid, and its rule_files resolve (relative to the file) to alerts.yml."""
    result = run([binary("promtool"), "check", "config", str(PROMETHEUS_YML)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout, result.stdout
    assert f"Checking {ALERTS_YML}" in result.stdout, f"rule_files did not resolve to alerts.yml:\n{result.stdout}"


def test_promtool_check_rules_and_a_broken_copy(tmp_path):
    promtool = binary("promtool")
    result = run([promtool, "check", "rules", str(ALERTS_YML)])
    assert result.returncode == 0 and "SUCCESS: 7 rules found" in result.stdout, result.stdout + result.stderr
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS_YML.read_text().replace("shelfml_drift_jsd > on()", "shelfml_drift_jsd >> on()"))
    result = run([promtool, "check", "rules", str(broken)])
    assert result.returncode != 0 and "ShelfmlDrift" in result.stdout + result.stderr, result.stdout + result.stderr


def test_promtool_alert_unit_tests():
    """alerts_test.yml: each alert fires on its unhealthy series after its `for:`, and not on the healthy ones."""
    result = run([binary("promtool"), "test", "rules", ALERTS_TEST_YML.name], cwd=MONITORING)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("old, new, alert", [
    ("expr: vector(0.1)", "expr: vector(0.6)", "ShelfmlDrift"),
    ("expr: vector(0.05)", "expr: vector(0.5)", "ShelfmlErrorRate"),
    ('stage="infer"', 'stage="parse"', "ShelfmlHighLatencyP99"),
    ("for: 1m", "for: 5m", "ShelfmlServerDown"),
], ids=["drift-threshold", "error-threshold", "latency-stage", "down-for"])
def test_alert_unit_tests_catch_a_changed_rule(tmp_path, old, new, alert):
    """The unit tests pin each alert's threshold or duration: changing one makes `promtool test rules` fail."""
    promtool = binary("promtool")
    text = ALERTS_YML.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in alerts.yml"
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    shutil.copy(ALERTS_TEST_YML, tmp_path / ALERTS_TEST_YML.name)
    result = run([promtool, "test", "rules", ALERTS_TEST_YML.name], cwd=tmp_path)
    assert result.returncode != 0 and f"alertname: {alert}" in result.stderr, result.stdout + result.stderr


def test_alert_contract():
    """The four alerts, each with a severity and an annotation naming what it is about, and each unit-tested."""
    rules = {r.get("alert") or r["record"]: r for g in yaml.safe_load(ALERTS_YML.read_text())["groups"]
             for r in g["rules"] if g["name"] == "shelfml"}
    assert ALERT_NAMES <= set(rules), f"alerts.yml lacks {ALERT_NAMES - set(rules)}"
    assert {name: rules[name]["for"] for name in ("ShelfmlDrift", "ShelfmlServerDown")} == \
           {"ShelfmlDrift": "10m", "ShelfmlServerDown": "1m"}
    assert rules["ShelfmlDrift"]["labels"]["severity"] == "warning"
    assert rules["ShelfmlServerDown"]["labels"]["severity"] == "critical"
    assert all("$labels.model" in rules["ShelfmlDrift"]["annotations"][k] and
               "$labels.feature" in rules["ShelfmlDrift"]["annotations"][k] for k in ("summary", "description"))
    tested = {t["alertname"] for case in yaml.safe_load(ALERTS_TEST_YML.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    untested = {r for r in rules if r.startswith("Shelfml")} - tested
    assert not untested, f"alerts without a case in alerts_test.yml: {sorted(untested)}"


# ---------------------------------------------------------------------------------------------
# Grafana: dashboard, provisioning, compose

def test_dashboard_panels_and_datasource():
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in panels:
        where = f"panel {panel['id']} {panel.get('title')!r}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, f"{where}: gridPos {grid} leaves the 24-column grid"
        if panel["type"] == "row":
            continue
        assert panel.get("targets") and all(t.get("expr") for t in panel["targets"]), f"{where}: no query"
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": uid}, f"{where}: datasource {source}, not uid {uid}"
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid, f"variable {variable['name']}: datasource not {uid}"
    queries = " ".join(dashboard_queries(DASHBOARD_JSON))
    missing = [m for m in SERVED_METRICS if not re.search(rf"\b{m}\b", queries)]
    assert not missing, f"the dashboard shows none of {missing}"
    titles = " ".join(p["title"].lower() for p in panels)
    for word in ("error rate", "p99", "drift", "category", "abstention", "brand", "confidence", "price",
                 "input length", "queue", "version", "taxonomy"):
        assert word in titles, f"no panel about {word!r}"


def test_dashboard_queries_expand_variables(tmp_path):
    dashboard = json.loads(DASHBOARD_JSON.read_text())
    assert all("$" not in q for q in dashboard_queries(DASHBOARD_JSON)), "a Grafana variable was left in a query"
    dashboard["panels"][1]["targets"][0]["expr"] = 'rate(shelfml_rows_total{model=~"$shop"}[$__rate_interval])'
    bad = tmp_path / "dashboard.json"
    bad.write_text(json.dumps(dashboard))
    with pytest.raises(ValueError, match=r"\$shop"):
        dashboard_queries(bad)


def test_provisioning_matches_compose():
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["profiles"] == grafana["profiles"] == ["monitoring"]
    for service in (prometheus, grafana):
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), f"{service['image']} is not pinned"
    assert "prometheus" in grafana["depends_on"]
    assert any(p.endswith(":9090") for p in prometheus["ports"]) and any(p.endswith(":3000") for p in grafana["ports"])

    prom_mounts = mounts(prometheus)
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == PROMETHEUS_YML
    rule_files = yaml.safe_load(PROMETHEUS_YML.read_text())["rule_files"]
    for rule_file in rule_files:  # resolved relative to the config inside the container
        assert prom_mounts[f"/etc/prometheus/{rule_file}"] == MONITORING / rule_file

    graf_mounts = mounts(grafana)
    provisioning = next(t for t, s in graf_mounts.items() if s == GRAFANA / "provisioning")
    assert provisioning == "/etc/grafana/provisioning"
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    assert provider["type"] == "file"
    assert graf_mounts[provider["options"]["path"]] == DASHBOARD_JSON.parent, \
        f"the dashboards provider reads {provider['options']['path']}, which compose does not mount from " \
        f"{DASHBOARD_JSON.parent}"

    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host == "prometheus" and port == "9090" and datasource["type"] == "prometheus"
    # Prometheus scrapes the server's alias and metrics port
    target = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"][0]["static_configs"][0]["targets"][0]
    server = services["server-cpu"]
    assert target == "server:8002" and "server" in server["networks"]["default"]["aliases"]
    assert "8002:8002" in server["ports"]


# ---------------------------------------------------------------------------------------------
# A real Prometheus on the shipped files

class Exposition:
    """Triton's /metrics as the served models fill it (every shelfml_* series labelled with its version), on a
    loopback port: the tagger drifted, fails 10 % of its requests and infers slowly; the price model is healthy.
    Counters grow with every scrape."""

    def __init__(self):
        self.scrapes = 0
        exposition = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                exposition.scrapes += 1
                body = exposition.text(exposition.scrapes).encode() if self.path == "/metrics" else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.target = f"{LOOPBACK}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def text(n: int) -> str:
        lines = []

        def metric(name: str, kind: str, samples: list[tuple[str, float]]):
            lines.append(f"# HELP {name} {name}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                labels = labels if "version=" in labels else '{version="1",' + labels[1:]
                lines.append(f"{name}{labels} {value:g}")

        def histogram(name: str, labels: str, buckets: list[tuple[str, float]]):
            labels += ',version="1"'
            for le, count in buckets:
                lines.append(f'{name}_bucket{{{labels},le="{le}"}} {count * n:g}')
            lines.append(f"{name}_sum{{{labels}}} {buckets[-1][1] * n:g}")
            lines.append(f"{name}_count{{{labels}}} {buckets[-1][1] * n:g}")

        for model in ("tagger", "price"):
            lines.append(f'nv_inference_request_success{{model="{model}",version="1"}} {10 * n}')
            lines.append(f'nv_inference_request_failure{{model="{model}",reason="BACKEND",version="1"}} {n}')
            lines.append(f'nv_inference_queue_duration_us{{model="{model}",version="1"}} {300 * n}')
            lines.append(f'nv_inference_request_summary_us{{model="{model}",version="1",quantile="0.99"}} 607')
        metric("shelfml_requests_total", "counter", [
            ('{model="tagger",outcome="ok"}', 90 * n), ('{model="tagger",outcome="error"}', 10 * n),
            ('{model="price",outcome="ok"}', 100 * n), ('{model="price",outcome="error"}', 0)])
        metric("shelfml_rows_total", "counter", [('{model="tagger",outcome="ok"}', 900 * n),
                                                 ('{model="price",outcome="ok"}', 1000 * n)])
        metric("shelfml_top_level_total", "counter", [('{model="tagger",category="Clothing"}', 600 * n),
                                                      ('{model="tagger",category="Home"}', 300 * n)])
        metric("shelfml_abstain_total", "counter", [('{model="tagger"}', 45 * n)])
        metric("shelfml_brand_source_total", "counter", [('{model="tagger",source="known"}', 700 * n),
                                                         ('{model="tagger",source="copied"}', 200 * n)])
        metric("shelfml_drift_jsd", "gauge", [('{model="tagger",feature="top_level"}', 0.5),
                                              ('{model="price",feature="price_decile"}', 0.02)])
        metric("shelfml_drift_window_rows", "gauge", [('{model="tagger",feature="top_level"}', 1000),
                                                      ('{model="price",feature="price_decile"}', 1000)])
        metric("shelfml_taxonomy_info", "gauge", [('{model="tagger",sha256="' + "ab" * 32 + '"}', 1)])
        metric("shelfml_model_version_info", "gauge", [('{model="tagger",version="1"}', 1),
                                                       ('{model="price",version="1"}', 1)])
        lines += ["# TYPE shelfml_stage_seconds histogram", "# TYPE shelfml_confidence histogram",
                  "# TYPE shelfml_price histogram", "# TYPE shelfml_input_chars histogram"]
        histogram("shelfml_stage_seconds", 'model="tagger",stage="infer"', [("0.1", 0), ("1", 0), ("2.5", 100),
                                                                            ("+Inf", 100)])
        histogram("shelfml_stage_seconds", 'model="price",stage="infer"', [("0.1", 100), ("1", 100),
                                                                           ("2.5", 100), ("+Inf", 100)])
        histogram("shelfml_confidence", 'model="tagger",level="1"', [("0.5", 100), ("1", 900), ("+Inf", 900)])
        histogram("shelfml_price", 'model="price"', [("100", 300), ("1000", 900), ("+Inf", 1000)])
        histogram("shelfml_input_chars", 'model="tagger"', [("32", 100), ("128", 900), ("+Inf", 900)])
        return "\n".join(lines) + "\n"

    def __enter__(self) -> "Exposition":
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            self.close()


def wait_for(what: str, check, timeout_s: float = 30.0, every_s: float = 0.25):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"{what} within {timeout_s:.0f} s; last: {last}")


def scraped(prom: PrometheusProcess) -> list[dict]:
    """The active targets once each has been scraped at least once ([] before)."""
    targets = prom.targets()
    return targets if targets and all(t["health"] != "unknown" for t in targets) else []


def firing(prom: PrometheusProcess) -> set[tuple[str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("model", a["labels"].get("instance", "")))
            for a in prom.alerts() if a["state"] == "firing"}


def test_prometheus_scrapes_alerts_and_serves_the_dashboard(tmp_path):
    binary("prometheus")
    with Exposition() as exposition, PrometheusProcess(scrape_config_for(exposition.target, 1.0),
                                                       {"alerts.yml": rules_for_test("0s")}, tmp_path) as prom:
        targets = wait_for("the triton target is scraped", lambda: scraped(prom))
        assert [(t["labels"]["job"], t["health"]) for t in targets] == [("triton", "up")], \
            [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        assert targets[0]["scrapeUrl"] == f"http://{exposition.target}/metrics"

        expected = {("ShelfmlDrift", "tagger"), ("ShelfmlErrorRate", "tagger"), ("ShelfmlHighLatencyP99", "tagger")}
        alerts = wait_for("the tagger's alerts fire", lambda: expected <= firing(prom) and firing(prom))
        assert alerts == expected, f"firing {alerts}: the healthy price model or server must not alert"
        drift = next(a for a in prom.alerts() if a["labels"]["alertname"] == "ShelfmlDrift")
        assert drift["labels"]["feature"] == "top_level" and "above 0.1" in drift["annotations"]["description"]

        # Every dashboard query is valid PromQL here (a bad one raises), and each finds the series it shows.
        with pytest.raises(PrometheusError, match="parse error"):
            prom.query("sum by (model) (rate(shelfml_rows_total[1m])")
        empty = []
        for expr in dashboard_queries(DASHBOARD_JSON):
            if not prom.query(expr)["result"]:  # raises on a query Prometheus rejects
                empty.append(expr)
        assert not empty, f"dashboard queries with no data from the exposition: {empty}"

        exposition.close()  # the server goes away: up == 0, and (for: 0s here) the alert fires at once
        wait_for("ShelfmlServerDown fires", lambda: ("ShelfmlServerDown", exposition.target) in firing(prom))
