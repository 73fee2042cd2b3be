"""Issue 9 §1 end to end: a mailbox full of hostile mail, through a real Dovecot, a real
producer process and a real Redis. Every message arrives once (degraded or not), exit 0."""

from __future__ import annotations

import json
import subprocess
from collections import Counter

import pytest

from email_ingestion.sandbox.hostile_mail import hostile_messages, nested_multipart
from email_ingestion.sandbox.sample_mail import sample_message
from tests.conftest import producer_cmd, stream_payloads


@pytest.mark.parametrize("batch_size", [None, "4"], ids=["default-settings", "helper-process"])
def test_hostile_mailbox_delivers_every_message_and_exits_zero(mailbox, producer_env, redis_client, batch_size):
    """Hostile messages between ordinary ones: all are delivered, none twice, rc 0, and no
    message content reaches the log."""
    # Past LARGE_MESSAGE_BYTES: the BODYSTRUCTURE + partial-fetch path, nested deep too.
    large_nested = nested_multipart(1000).replace(b"x\r\n", b"x" * 1_200_000 + b"\r\n")
    hostile = [*hostile_messages(), ("large-nested", large_nested)]
    raws = [raw for _, raw in hostile]
    messages = [m for pair in zip(raws, [sample_message(i) for i in range(len(raws))], strict=True) for m in pair]
    mailbox.append(*messages)
    env = dict(producer_env, **({"BATCH_SIZE": batch_size} if batch_size else {}))
    done = subprocess.run(producer_cmd("--once"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    payloads = stream_payloads(redis_client)
    counts = Counter(p["uid"] for p in payloads)
    assert sorted(counts) == list(range(1, len(messages) + 1)) and set(counts.values()) == {1}
    degraded = {p["uid"] for p in payloads if p["parse_error"]}
    nested_uid = 2 * [name for name, _ in hostile].index("nested-1000") + 1
    assert nested_uid in degraded
    assert all(p["from"]["address"] == "hostile@example.org" for p in payloads if p["uid"] % 2)
    for line in done.stderr.splitlines():
        json.loads(line)  # every log line is still a JSON line
    assert "deep-nesting-subject" not in done.stderr and "late-date-subject" not in done.stderr


def test_liveness_moves_with_every_message_built(mailbox, make_settings, redis_client):
    """One batch of 30 messages through the real helper process: the runner's liveness ticks
    for each message built, not once per batch, so a batch of hostile messages (up to 5 s of
    CPU each) cannot outlast HEALTH_STALL_SECONDS (issue 18)."""
    import threading

    from email_ingestion.common.logging import Redactor
    from email_ingestion.producer.cli import build_runner

    mailbox.append(*[sample_message(i) for i in range(30)])
    settings = make_settings(BATCH_SIZE=30)
    runner = build_runner(settings, threading.Event(), Redactor(settings.secrets()))
    ticks: list[int] = []
    tick = runner.liveness.tick
    runner.liveness.tick = lambda: (ticks.append(1), tick())[1]  # type: ignore[method-assign]
    runner.run(once=True)
    assert len(stream_payloads(redis_client)) == 30
    assert len(ticks) >= 30
