"""Per-minute flow figures in Redis: how many messages the workers handled and how long each
took from arriving in the mailbox (INTERNALDATE, the server's APPEND time) to its handler's
success. The console draws the last hour from them (console/overview.py).

Prometheus has the same figures per process; these are summed over every worker in one
place any tool can read, without a Prometheus server. After a batch has settled, its figures
go out in one pipelined round trip (a few HINCRBY on one hash per minute, kept FLOW_TTL_S),
apart from the settlement's MULTI and best effort: a Redis error or an ACL without HINCRBY
loses a minute's figures, never a batch's outcomes.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter

import redis

from email_ingestion.common.keys import StreamKeys

log = logging.getLogger(__name__)
_warned = threading.Event()

MINUTE_MS = 60_000
FLOW_TTL_S = 2 * 3600
# Upper bounds (ms) of the latency buckets, as the end-to-end Prometheus histogram's.
BUCKETS_MS = (500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 300_000, 1_800_000, 3_600_000)


_BUCKET_NAMES = tuple(f"le_{bound}" for bound in BUCKETS_MS) + ("le_inf",)


def bucket_of(latency_ms: int) -> str:
    """The field of the smallest bucket holding `latency_ms` (bounds are inclusive)."""
    return _BUCKET_NAMES[bisect.bisect_left(BUCKETS_MS, latency_ms)]


class FlowTally:
    """What one batch adds; queued into the settlement, cleared once it has landed."""

    def __init__(self) -> None:
        self.handled = 0
        self.latency_sum_ms = 0
        self.timed = 0
        self.buckets: Counter[str] = Counter()

    def add(self, latency_ms: int | None) -> None:
        self.handled += 1
        if latency_ms is not None:
            self.timed += 1
            self.latency_sum_ms += latency_ms
            self.buckets[bucket_of(latency_ms)] += 1

    def queue(self, pipe: redis.client.Pipeline, keys: StreamKeys, now_ms: int) -> None:
        if not self.handled:
            return
        key = keys.flow(now_ms - now_ms % MINUTE_MS)
        pipe.hincrby(key, "handled", self.handled)
        if self.timed:
            pipe.hincrby(key, "timed", self.timed)
            pipe.hincrby(key, "latency_sum_ms", self.latency_sum_ms)
            for bucket, count in self.buckets.items():
                pipe.hincrby(key, bucket, count)
        pipe.pexpire(key, FLOW_TTL_S * 1000)

    def record(self, client: redis.Redis, keys: StreamKeys, now_ms: int) -> None:
        """Send the figures (best effort) and start afresh."""
        if not self.handled:
            return
        try:
            pipe = client.pipeline(transaction=False)
            self.queue(pipe, keys, now_ms)
            pipe.execute()
        except redis.RedisError as exc:
            # Once at warning (an ACL without HINCRBY would repeat it every batch), then debug.
            level = logging.DEBUG if _warned.is_set() else logging.WARNING
            _warned.set()
            log.log(level, "flow figures not recorded (the console's throughput chart)",
                    extra={"error": type(exc).__name__})
        self.clear()

    def clear(self) -> None:
        self.handled = self.timed = self.latency_sum_ms = 0
        self.buckets.clear()
