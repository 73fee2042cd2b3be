"""`producer --dry-run | head` ends quietly: no BrokenPipeError traceback, exit 0."""

from __future__ import annotations

import subprocess

from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import producer_cmd


def test_dry_run_into_a_closed_pipe_ends_quietly(mailbox, producer_env):
    """The reader leaves after one line while batches are still coming: exit 0, nothing on stderr but logs."""
    mailbox.append(*(sample_message(i) for i in range(1, 41)))
    done = subprocess.run(["bash", "-c", " ".join(f"'{w}'" for w in producer_cmd("--dry-run", "--batch-size", "5"))
                           + " | head -n 1; exit ${PIPESTATUS[0]}"],
                          env={**producer_env, "PARALLEL_PARSE": "false"}, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("uid=1 ") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
