"""Redis's own figures at scrape time: reachable or not, memory used and its ceiling.

The EmailRedisMemoryHigh alert reads these (from the exporter) instead of an unshipped
redis_exporter. With `maxmemory-policy noeviction`, writes fail once used_memory reaches
maxmemory: the producer's appends and the workers' acknowledgements both stop.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NS = "email_ingestion"


class RedisCollector(Collector):
    def __init__(self, client: redis.Redis, retry_keys: list[str]) -> None:
        self.client = client
        self.retry_keys = retry_keys  # one per stream; the gauge is their sum

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            memory = self.client.info("memory")
            scheduled = sum(int(self.client.zcard(key)) for key in self.retry_keys)
        except redis.RedisError:
            yield _gauge("redis_up", "1 when the exporter can read Redis", 0.0)
            return
        yield _gauge("redis_up", "1 when the exporter can read Redis", 1.0)
        yield _gauge("redis_memory_used_bytes", "Redis INFO used_memory", float(memory["used_memory"]))
        yield _gauge("redis_memory_max_bytes", "Redis INFO maxmemory (0: no limit)", float(memory.get("maxmemory", 0)))
        yield _gauge("retries_scheduled", "Messages waiting in the retry sets of every stream", float(scheduled))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{NS}_{name}", doc, value=value)
