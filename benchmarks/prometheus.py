"""A real Prometheus server (for the tests and ``shelfml bench --operations``), and the shipped monitoring files
adapted to it.

``PrometheusProcess`` runs the ``prometheus`` binary on a free loopback port with its config, rules and TSDB in
a work folder; ``scrape_config_for`` / ``rules_for_test`` give docker/monitoring/'s prometheus.yml and alerts.yml
with a local target and short intervals; ``dashboard_queries`` lists the Grafana dashboard's PromQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docker" / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
ALERTS_YML = MONITORING / "alerts.yml"
DASHBOARD_JSON = MONITORING / "grafana" / "dashboards" / "shelfml.json"
LOOPBACK = "127.0.0.1"


def find_binary(name: str) -> str | None:
    """``/usr/bin/<name>`` (Debian's package), else the one on PATH."""
    path = Path("/usr/bin") / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else shutil.which(name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered with an error."""


class PrometheusProcess:
    """``prometheus`` on ``127.0.0.1:<free port>`` with ``config_text`` as prometheus.yml and ``rules``
    (file name -> text) beside it in ``workdir``; a context manager (start on enter, stop on exit)."""

    def __init__(self, config_text: str, rules: dict[str, str] | None, workdir: Path,
                 binary: str | None = None):
        self.workdir = Path(workdir).resolve()  # the process runs there: every path it gets is absolute
        self.config_text = config_text
        self.rules = dict(rules or {})
        self.binary = binary or find_binary("prometheus")
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_file = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self, timeout_s: float = 30.0) -> "PrometheusProcess":
        """Write the files, start the process and wait for ``/-/ready``; raise PrometheusError if it is not."""
        if not self.binary:
            raise PrometheusError("the prometheus binary is not installed (apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.config_text)
        for name, text in self.rules.items():
            (self.workdir / name).write_text(text)
        cmd = [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
               f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=info"]
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with code {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus was not ready within {timeout_s:.0f} s:\n{self.log()[-3000:]}")

    def _api(self, path: str, params: dict[str, str] | None = None):
        """``data`` of a /api/v1 answer; PrometheusError with Prometheus' error text when it is not a success."""
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400/422 carry the same JSON with the error
            try:
                body = json.loads(e.read())
            except ValueError:
                raise PrometheusError(f"GET {path}: HTTP {e.code}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"GET {path} {params or ''}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> dict:
        """An instant query: ``{"resultType": ..., "result": [...]}``."""
        return self._api("query", {"query": expr})

    def alerts(self) -> list[dict]:
        """Active (pending or firing) alerts, each with labels, annotations, state and value."""
        return self._api("alerts")["alerts"]

    def targets(self) -> list[dict]:
        """The active scrape targets, each with labels, health ("up", "down", "unknown") and lastError."""
        return self._api("targets", {"state": "active"})["activeTargets"]

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit code (None when never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "PrometheusProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole milliseconds ("1500ms", "1s")."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scrape_config_for(target: str, interval_s: float = 1.0) -> str:
    """The shipped prometheus.yml with the ``triton`` job scraping ``target`` (host:port) every ``interval_s``
    and the rules evaluated as often (the scrape timeout is cut to the interval, which it may not exceed)."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    interval = _duration(interval_s)
    config.setdefault("global", {}).update(scrape_interval=interval, evaluation_interval=interval,
                                           scrape_timeout=interval)
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == "triton"]
    if len(jobs) != 1:
        raise ValueError(f"{PROMETHEUS_YML} has {len(jobs)} scrape jobs named triton, expected 1")
    job = jobs[0]
    job["static_configs"] = [{"targets": [target]}]
    for key in ("scrape_interval", "scrape_timeout"):
        if key in job:
            job[key] = interval
    return yaml.safe_dump(config, sort_keys=False, width=float("inf"))


def rules_for_test(for_duration: str = "0s") -> str:
    """The shipped alerts.yml with every alert's ``for:`` set to ``for_duration``."""
    rules = yaml.safe_load(ALERTS_YML.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = for_duration
    return yaml.safe_dump(rules, sort_keys=False, width=float("inf"))


# Grafana's built-in interval variables, and a dashboard variable in any of its spellings: $name, ${name},
# ${name:format} and [[name]].
_BUILTIN = {"__rate_interval", "__interval", "__range", "__range_s", "__range_ms", "__interval_ms"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def dashboard_panels(dashboard: dict) -> list[dict]:
    """Every panel of a dashboard, those nested in (collapsed) rows included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries(path: Path = DASHBOARD_JSON) -> list[str]:
    """Every PromQL ``expr`` of the dashboard's panel targets, with Grafana's interval variables (such as
    ``$__rate_interval``) as ``1m`` and each dashboard variable as its "All" value (``allValue``, else ``.*``).
    A variable the dashboard does not define raises ValueError."""
    dashboard = json.loads(Path(path).read_text())
    defined = {v["name"]: v.get("allValue") or ".*" for v in dashboard.get("templating", {}).get("list", [])}

    def value(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name in _BUILTIN:  # one minute, in the unit the variable is written in
            return "60000" if name.endswith("_ms") else "60" if name.endswith("_s") else "1m"
        if name in defined:
            return defined[name]
        raise ValueError(f"{path}: a query uses ${name}, which the dashboard does not define")

    return [_VARIABLE.sub(value, target["expr"]) for panel in dashboard_panels(dashboard)
            for target in panel.get("targets", []) if target.get("expr")]
