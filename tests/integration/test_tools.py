"""The demo, the load test and the benchmarks run (small sizes): the README's commands
must keep working."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def run(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                          env={k: v for k, v in __import__("os").environ.items()
                               if not k.startswith(("IMAP_", "REDIS_", "GOOGLE_"))})


def test_demo_runs_end_to_end_and_stops_cleanly():
    """scripts/demo.py syncs, handles the mail and stops cleanly."""
    done = run("scripts/demo.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "first sync done" in done.stdout and "(clean)" in done.stdout
    assert "handled" in done.stdout and "NOT" not in done.stdout


def test_load_test_reports_throughput_and_percentiles():
    """The load test handles every email, its workers exit 0, and it reports ordered latency percentiles."""
    done = run("-m", "tests.load.load_test", "--emails", "600", "--workers", "2", "--rate", "600", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["handled"] == 600 and result["exit_codes"] == [0, 0]
    assert result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]


def test_worker_benchmark_runs():
    """scripts/bench_worker.py runs and reports a positive worker throughput."""
    done = run("scripts/bench_worker.py", "--messages", "3000", "--naive-messages", "500", "--rounds", "1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["worker_msg_per_s"] > 0


@pytest.mark.skipif(not shutil.which("mbsync"), reason="isync not installed")
def test_producer_benchmark_runs():
    """scripts/bench_producer.py runs and reports a positive producer throughput for every message."""
    done = run("scripts/bench_producer.py", "--messages", "300", "--rounds", "1", "--naive-sample", "5", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["messages"] == 300 and result["producer_msg_per_s"] > 0
