"""The DLQ admin CLI's conventions: missing ids exit 1, ISO times, --json anywhere."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.conftest import ROOT

DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z"


def dlq(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_url}
    return subprocess.run([sys.executable, "-m", "email_ingestion.worker.dlq_admin", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def add_letter(client) -> str:
    fields = {"payload": "{}", "reason": "permanent", "error_type": "PermanentError", "attempts": "1",
              "first_failure_ms": "1764648151224", "last_failure_ms": "1764648152224", "dead_at_ms": "1764648152300"}
    return client.xadd(DLQ, fields).decode()


def test_show_of_a_missing_id_exits_1(redis_server, redis_client):
    """`dlq show` of an id that is not there says so on stderr and exits 1."""
    add_letter(redis_client)
    done = dlq(redis_server.url, "show", "1-0")
    assert done.returncode == 1 and "no dead letter 1-0" in done.stderr and done.stdout == ""
    done = dlq(redis_server.url, "--json", "show", "1-0")
    assert done.returncode == 1


def test_list_prints_iso_times(redis_server, redis_client):
    """`dlq list` shows first/last failure and death as ISO 8601 UTC, not epoch milliseconds."""
    add_letter(redis_client)
    done = dlq(redis_server.url, "list")
    assert done.returncode == 0, done.stderr
    assert "first_failure=2025-12-02T04:02:31.224000Z" in done.stdout or re.search(f"first_failure={ISO}", done.stdout)
    assert "1764648151224" not in done.stdout and re.search(f"dead_at={ISO}", done.stdout)


def test_json_is_accepted_after_the_subcommand(redis_server, redis_client):
    """`dlq stats --json` and `dlq --json stats` give the same JSON; options after it too."""
    add_letter(redis_client)
    after = dlq("redis://127.0.0.1:1/0", "stats", "--json", "--redis-url", redis_server.url)
    before = dlq(redis_server.url, "--json", "stats")
    assert after.returncode == 0 and before.returncode == 0, after.stderr
    assert json.loads(after.stdout)["by_reason"] == json.loads(before.stdout)["by_reason"] == {"permanent": 1}
    listed = json.loads(dlq(redis_server.url, "list", "--json").stdout)
    assert listed[0]["first_failure_ms"] == "1764648151224" and re.fullmatch(ISO, listed[0]["first_failure"])
