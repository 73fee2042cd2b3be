"""Property test of the retry/DLQ state machine on a real Redis.

For any script of handler outcomes, every message ends in exactly one place (handled once,
or dead-lettered once), never both, never lost; retries and pending lists end empty; and
no message is tried more than MAX_RETRIES + 1 times. Time is passed in (a look-ahead on
Redis's clock): no sleeping.
"""

from __future__ import annotations

import threading
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from email_ingestion.common.errors import PermanentError
from email_ingestion.common.settings import load_settings
from email_ingestion.sandbox.sample_payloads import add_payloads
from email_ingestion.worker.cli import build_worker
from email_ingestion.worker.delivery import Delivery

STREAM, GROUP = "email_ingestion_stream", "email_processor_group"
DLQ = "email_ingestion_dlq:{email_ingestion_stream}"
MAX_RETRIES = 2

outcomes = st.lists(st.sampled_from(["ok", "fail", "permanent"]), min_size=1, max_size=5)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scripts=st.lists(outcomes, min_size=1, max_size=6), batch_size=st.integers(1, 4))
def test_every_message_ends_in_exactly_one_place(redis_server, redis_client, monkeypatch, scripts, batch_size):
    """Each message is handled or dead-lettered exactly once, never lost, within MAX_RETRIES + 1 tries."""
    redis_client.flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("MAX_RETRIES", str(MAX_RETRIES))
    monkeypatch.setenv("WORKER_METRICS_PORT", "0")
    monkeypatch.setenv("WORKER_BATCH_SIZE", str(batch_size))
    add_payloads(redis_client, len(scripts))
    tries: Counter[int] = Counter()
    handled: Counter[int] = Counter()

    def handler(payload, ctx):
        script = scripts[payload.uid]
        outcome = script[min(tries[payload.uid], len(script) - 1)]
        tries[payload.uid] += 1
        if outcome == "fail":
            raise RuntimeError("fail")
        if outcome == "permanent":
            raise PermanentError("permanent")
        handled[payload.uid] += 1

    worker = build_worker(load_settings(env_file=None), "w", threading.Event())
    worker.processor.handler = handler
    worker.ensure_group()
    far_future_ms = 2**50
    for _ in range(50):  # bounded: each round moves all due retries and reads everything
        worker.retries.move_due(ahead_ms=far_future_ms)
        reply = redis_client.xreadgroup(GROUP, "w", {STREAM: ">"}, count=batch_size)
        deliveries = [Delivery.from_redis(i, f) for _, entries in reply or [] for i, f in entries]
        if not deliveries and worker.retries.waiting() == 0:
            break
        worker.processor.process(deliveries)
    dead = Counter(int(__import__("json").loads(f[b"payload"])["uid"]) for _, f in redis_client.xrange(DLQ))
    for uid in range(len(scripts)):
        assert handled[uid] + dead[uid] == 1, (uid, scripts[uid], handled[uid], dead[uid])
        assert tries[uid] <= MAX_RETRIES + 1
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0
    assert worker.retries.waiting() == 0
