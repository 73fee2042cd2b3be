"""The per-minute flow tally the workers add to each settlement (worker/flow.py)."""

from __future__ import annotations

import pytest

from email_ingestion.common.keys import StreamKeys
from email_ingestion.worker.flow import FLOW_TTL_S, FlowTally, bucket_of


@pytest.mark.parametrize(("latency_ms", "bucket"), [
    (0, "le_500"), (500, "le_500"), (501, "le_1000"), (59_999, "le_60000"), (3_600_000, "le_3600000"),
    (3_600_001, "le_inf"),
])
def test_bucket_bounds_are_inclusive(latency_ms, bucket):
    """A latency goes to the smallest bucket whose bound it does not exceed."""
    assert bucket_of(latency_ms) == bucket


def test_a_batch_adds_to_its_minute_and_clears(redis_client):
    """Handled count, timed count, latency sum and buckets land in the minute's hash with a TTL; the tally then starts afresh."""
    client = redis_client
    keys = StreamKeys(stream="s", group="g")
    tally = FlowTally()
    for latency in (100, 700, None):
        tally.add(latency)
    tally.record(client, keys, now_ms=120_500)
    stored = {k.decode(): int(v) for k, v in client.hgetall(keys.flow(120_000)).items()}
    assert stored == {"handled": 3, "timed": 2, "latency_sum_ms": 800, "le_500": 1, "le_1000": 1}
    assert 0 < client.ttl(keys.flow(120_000)) <= FLOW_TTL_S
    assert tally.handled == 0  # record() starts afresh
    pipe = client.pipeline(transaction=True)
    tally.queue(pipe, keys, now_ms=120_600)
    assert len(pipe) == 0
