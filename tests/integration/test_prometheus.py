"""A real Prometheus (the Debian package) scrapes a live producer, two workers and the
exporter through the shipped config/prometheus.yml (ports rewritten, 1 s intervals): every
expression of the dashboard and of the alert rules returns data, and stopping the workers
fires EmailNoActiveWorkers (its `for:` shortened in the test copy)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from email_ingestion.sandbox.dovecot import free_port
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import ROOT, producer_cmd
from tests.support.waits import wait_until

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not shutil.which("prometheus"), reason="prometheus not installed (apt-get install prometheus)")]
SHIPPED_PORTS = {"producer": 9090, "worker1": 9101, "worker2": 9102, "exporter": 9120}
COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.e+-]+\s*$")
SET_OPERATOR = re.compile(r"\s+(?:and|or|unless)(?:\s+on\s*\([^)]*\))?\s+")


def operands(expr: str) -> list[str]:
    """The parts of an alert expression that must have data: set operators split, thresholds cut."""
    return [COMPARISON.sub("", part.strip()) for part in SET_OPERATOR.split(" ".join(expr.split()))]


def rule_exprs() -> dict[str, str]:
    """alert name -> expr from config/alerts.yml (plain scalars, continued on deeper-indented lines)."""
    found: dict[str, str] = {}
    alert, expr_indent = "", -1
    for line in (ROOT / "config" / "alerts.yml").read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if expr_indent >= 0 and indent > expr_indent and not line.strip().startswith("#"):
            found[alert] += " " + line.strip()
            continue
        expr_indent = -1
        if line.strip().startswith("- alert:"):
            alert = line.split(":", 1)[1].strip()
        elif line.strip().startswith("expr:"):
            found[alert], expr_indent = line.split(":", 1)[1].strip(), indent
    return found


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "config" / "grafana_dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_operands_split_alert_expressions():
    """The splitting keeps every metric of a rule and drops only the thresholds."""
    assert operands('sum by (s) (rate(a[10m])) < 0.1\n  and on (stream) max by (s) (b) > 100') == [
        "sum by (s) (rate(a[10m]))", "max by (s) (b)"]
    assert operands("up == 0") == ["up"]
    assert len(rule_exprs()) >= 10 and "and" in rule_exprs()["EmailRedisMemoryHigh"]


def prometheus_config(tmp_path: Path, ports: dict[str, int]) -> Path:
    text = (ROOT / "config" / "prometheus.yml").read_text()
    for name, shipped in SHIPPED_PORTS.items():
        text = text.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{ports[name]}")
    text = re.sub(r"(scrape_interval|evaluation_interval): \d+s", r"\1: 1s", text)
    (tmp_path / "prometheus.yml").write_text(text)
    alerts = re.sub(r"for: \d+m", "for: 3s", (ROOT / "config" / "alerts.yml").read_text())
    (tmp_path / "alerts.yml").write_text(alerts)
    return tmp_path / "prometheus.yml"


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return json.loads(response.read())["data"]
        except OSError:
            return None

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("query", query=expr)
        return data["result"] if data else []

    def firing(self, alert: str) -> bool:
        data = self.get("alerts") or {"alerts": []}
        return any(a["labels"]["alertname"] == alert and a["state"] == "firing" for a in data["alerts"])


def keep_mail_coming(mailbox: Any, stop: threading.Event) -> None:
    """New mail every half second, so every rate() and histogram has something to show."""
    index = 1000
    while not stop.wait(0.5):
        try:
            mailbox.append(sample_message(index))
        except Exception:  # noqa: BLE001 - Dovecot under load may refuse one APPEND; the next one will do
            continue
        index += 1


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_prometheus_scrapes_everything_and_the_no_worker_alert_fires(tmp_path, mailbox, producer_env, redis_client):
    """Two scrapes of every target; each dashboard and alert expression has data; workers stopped -> alert."""
    mailbox.append(*(sample_message(i) for i in range(1, 6)))
    ports = {name: free_port() for name in SHIPPED_PORTS}
    prom_port = free_port()
    env = {**producer_env, "WORKER_BLOCK_TIMEOUT_MS": "200", "POLL_INTERVAL_SECONDS": "2"}
    procs = {"producer": start(producer_cmd(), {**env, "PRODUCER_METRICS_PORT": str(ports["producer"])}),
             "exporter": start([sys.executable, "-m", "email_ingestion", "exporter", "--port", str(ports["exporter"])], env)}
    for name in ("worker1", "worker2"):
        procs[name] = start([sys.executable, str(ROOT / "worker.py"), "--consumer", name, "--handler", "noop",
                             "--metrics-port", str(ports[name])], env)
    procs["prometheus"] = start(["prometheus", f"--config.file={prometheus_config(tmp_path, ports)}",
                                 f"--storage.tsdb.path={tmp_path / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"], env)
    stop_mail = threading.Event()
    mail = threading.Thread(target=keep_mail_coming, args=(mailbox, stop_mail), daemon=True)
    mail.start()
    api = Api(prom_port)
    try:
        two_scrapes = "min(count_over_time(up[1m])) >= 2 and count(up == 1) == 4"
        assert wait_until(lambda: api.query(two_scrapes), timeout_s=60), api.query("up")
        assert wait_until(lambda: api.query("sum(email_ingestion_emails_processed_total) > 5"), timeout_s=30)
        exprs = dashboard_exprs() + [part for expr in rule_exprs().values() for part in operands(expr)]
        assert wait_until(lambda: all(api.query(e) for e in exprs), timeout_s=30), \
            [e for e in exprs if not api.query(e)]
        assert not api.firing("EmailNoActiveWorkers")
        for name in ("worker1", "worker2"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(30) == 0
        assert wait_until(lambda: api.firing("EmailNoActiveWorkers"), timeout_s=60)
        assert not api.firing("EmailProducerDown")
    finally:
        stop_mail.set()
        mail.join(10)
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
