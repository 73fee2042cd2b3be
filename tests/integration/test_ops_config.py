"""Prometheus config, alert rules (with promtool unit tests) and the Grafana dashboard use
only metrics the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from prometheus_client import CollectorRegistry

from email_ingestion.admin.common import Target
from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.keys import StreamKeys
from email_ingestion.monitoring.collectors import ProcessCollector, StreamCollector
from email_ingestion.monitoring.exporter import registry_for
from email_ingestion.monitoring.health import Liveness
from email_ingestion.monitoring.metrics import ProducerMetrics, WorkerMetrics
from tests.conftest import ROOT

promtool = pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (apt-get install prometheus)")
EXTERNAL = {"up"}


def exported_names(redis_client) -> set[str]:
    """Every sample name a producer and a worker expose (collectors run against real Redis)."""
    redis_client.xgroup_create("s", "g", id="0", mkstream=True)
    producer, worker = CollectorRegistry(), CollectorRegistry()  # two processes, two registries
    ProducerMetrics("a", "INBOX", producer)
    WorkerMetrics("s", "g", worker)
    worker.register(StreamCollector(redis_client, "s", "g", "dlq"))
    worker.register(ProcessCollector(Liveness(60), [CircuitBreaker("imap")], "worker"))
    where = Target(redis_client, "s", "g", "dlq", StreamKeys(stream="s", group="g"))
    exporter = registry_for([where], Liveness(60))
    return {sample.name for registry in (producer, worker, exporter) for family in registry.collect()
            for sample in family.samples}


def used_names(text: str) -> set[str]:
    return set(re.findall(r"\b(email_ingestion_[a-z_]+|redis_[a-z_]+|up)\b(?=\s*[{\[(=<>!)]|\s*$|\s+(?:and|or|==|>|<))",
                          text))


@promtool
def test_prometheus_config_and_rules_are_valid():
    """promtool accepts the Prometheus config and alert rules and the alert unit tests pass."""
    for args in (["check", "config", "config/prometheus.yml"], ["check", "rules", "config/alerts.yml"],
                 ["test", "rules", "tests/prometheus/alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_alerts_and_dashboard_use_only_exported_metrics(redis_client):
    """Alert rules and dashboard queries use only metrics the code (or Redis/Prometheus) exports."""
    exported = exported_names(redis_client) | EXTERNAL
    alerts = (ROOT / "config" / "alerts.yml").read_text()
    dashboard = json.loads((ROOT / "config" / "grafana_dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = used_names(alerts) | set().union(*(used_names(e) for e in exprs))
    assert used, "the regex found no metric names: the test would prove nothing"
    assert used - exported == set()


def test_dashboard_has_the_panels_operators_need():
    """The Grafana dashboard has at least 13 panels covering every operational topic."""
    dashboard = json.loads((ROOT / "config" / "grafana_dashboard.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    assert len(dashboard["panels"]) >= 13
    for topic in ("throughput", "latency", "depth", "pending", "lag", "dlq", "errors", "retries", "circuit",
                  "poll duration", "end-to-end", "active workers", "uptime"):
        assert topic in titles, topic
