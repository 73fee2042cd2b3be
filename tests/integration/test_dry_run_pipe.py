"""`producer --dry-run | head` and the operator commands into a closed pipe end quietly:
no BrokenPipeError traceback, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from email_ingestion.sandbox.sample_mail import sample_message
from email_ingestion.sandbox.sample_payloads import add_payloads
from tests.conftest import ROOT, producer_cmd


def test_dry_run_into_a_closed_pipe_ends_quietly(mailbox, producer_env):
    """The reader leaves after one line while batches are still coming: exit 0, nothing on stderr but logs."""
    mailbox.append(*(sample_message(i) for i in range(1, 41)))
    done = subprocess.run(["bash", "-c", " ".join(f"'{w}'" for w in producer_cmd("--dry-run", "--batch-size", "5"))
                           + " | head -n 1; exit ${PIPESTATUS[0]}"],
                          env={**producer_env, "PARALLEL_PARSE": "false"}, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("uid=1 ") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("args", [["tail", "--count", "3000"], ["dlq", "list", "--limit", "3000"]])
def test_operator_commands_into_a_closed_pipe_end_quietly(redis_server, redis_client, args):
    """`email-ingest tail | head -1` (and dlq list): exit 0, no BrokenPipeError traceback."""
    add_payloads(redis_client, 3000)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd("email_ingestion_dlq:{email_ingestion_stream}", {"payload": "{}", "reason": "permanent", "n": str(i)})
    pipe.execute()
    env = {"PATH": os.environ["PATH"], "REDIS_URL": redis_server.url}
    command = " ".join([sys.executable, "-m", "email_ingestion", *args])
    done = subprocess.run(["bash", "-c", f"{command} | head -n 1; exit ${{PIPESTATUS[0]}}"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0
