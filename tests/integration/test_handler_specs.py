"""Handler specs are checked when a worker starts: a bad jsonl: path exits 2 with one line,
before any message is read (nothing fails into the DLQ, no directory is created)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT


def worker(redis_url: str, handler: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url, "WORKER_BLOCK_TIMEOUT_MS": "100"}
    return subprocess.run([sys.executable, str(ROOT / "worker.py"), "--consumer", "spec", "--handler", handler,
                           "--burst", "--env-file", os.devnull], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("make_spec", [
    lambda tmp: "jsonl:",
    lambda tmp: "jsonl:   ",
    lambda tmp: f"jsonl:{tmp}/no/such/dir/out.jsonl",
    lambda tmp: f"jsonl:{tmp}",
    lambda tmp: "webhook:",
    lambda tmp: "no_such_module_xyz:handle",
])
def test_bad_jsonl_path_exits_2_and_touches_nothing(tmp_path, redis_server, redis_client, make_spec):
    """Empty path, missing parent directory, a directory, an empty URL, an unknown module: exit 2,
    one line, messages untouched."""
    add_payloads(redis_client, 3)
    done = worker(redis_server.url, make_spec(tmp_path))
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "WORKER_HANDLER" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "no").exists()
    assert redis_client.xlen("email_ingestion_dlq:{email_ingestion_stream}") == 0
    assert redis_client.xlen("email_ingestion_stream") == 3


def test_good_jsonl_path_handles_everything(tmp_path, redis_server, redis_client):
    """The check does not refuse a writable file in an existing directory."""
    add_payloads(redis_client, 3)
    done = worker(redis_server.url, f"jsonl:{tmp_path}/out.jsonl")
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3
