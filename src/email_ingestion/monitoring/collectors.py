"""Gauges computed when Prometheus scrapes: stream figures from Redis, process figures."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.keys import StreamKeys
from email_ingestion.monitoring.health import Live
from email_ingestion.monitoring.heartbeats import live_workers

NS = "email_ingestion"


def stream_figures(client: redis.Redis, stream: str, group: str, dlq: str) -> dict[str, Any]:
    """Depth, pending, lag, DLQ depth and live workers of one stream and group."""
    pipe = client.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xlen(dlq)
    depth, dlq_depth = pipe.execute()
    # Heartbeats, not XINFO CONSUMERS (see monitoring/heartbeats.py); counted even before the
    # group exists, so a worker that cannot create it still shows up as alive.
    workers = len(live_workers(client, StreamKeys(stream=stream, group=group)))
    figures: dict[str, Any] = {"stream_depth": int(depth), "dlq_depth": int(dlq_depth), "pending": 0,
                               "lag": None, "group_exists": False, "active_workers": workers}
    try:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
    except redis.ResponseError:
        return figures
    info = groups.get(group)
    if info is None:
        return figures
    figures.update(group_exists=True, pending=int(info["pending"]),
                   lag=int(info["lag"]) if info.get("lag") is not None else None)
    return figures


_STREAM_GAUGES = (("stream_depth", "stream_depth", "Entries in the stream"),
                  ("dlq_depth", "dlq_depth", "Entries in the dead-letter queue"),
                  ("pending_messages", "pending", "Delivered but unacknowledged entries"),
                  ("consumer_lag", "lag", "Entries not yet delivered to the group"),
                  ("active_workers", "active_workers", "Consumers with a live heartbeat"))


class StreamCollector(Collector):
    def __init__(self, client: redis.Redis, stream: str, group: str, dlq: str) -> None:
        self.client, self.stream, self.group, self.dlq = client, stream, group, dlq

    def labelled_figures(self) -> tuple[list[str], dict[str, Any]] | None:
        """(stream, group) and the stream's figures; None while Redis cannot say."""
        try:
            return [self.stream, self.group], stream_figures(self.client, self.stream, self.group, self.dlq)
        except redis.RedisError:
            return None  # Redis down: the gauges go stale (absent), the alerts on `up`/breakers fire

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from _stream_gauges([self])


class StreamsCollector(Collector):
    """The stream gauges of several streams one worker reads: each name once, one sample per stream."""

    def __init__(self, parts: Sequence[StreamCollector]) -> None:
        self.parts = list(parts)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from _stream_gauges(self.parts)


def _stream_gauges(parts: Sequence[StreamCollector]) -> Iterator[GaugeMetricFamily]:
    rows = [row for row in (part.labelled_figures() for part in parts) if row is not None]
    for name, key, doc in _STREAM_GAUGES:
        samples = [(labels, figures[key]) for labels, figures in rows if figures.get(key) is not None]
        if not samples:
            continue
        family = GaugeMetricFamily(f"{NS}_{name}", doc, labels=["stream", "group"])
        for labels, value in samples:
            family.add_metric(labels, float(value))
        yield family


# (account, mailbox, breaker) of every mailbox a producer follows now.
MailboxBreakers = Callable[[], Iterable[tuple[str, str, CircuitBreaker]]]


class ProcessCollector(Collector):
    def __init__(self, liveness: Live, breakers: Iterable[CircuitBreaker], component: str,
                 mailbox_breakers: MailboxBreakers | None = None) -> None:
        self.liveness, self.breakers, self.component = liveness, list(breakers), component
        self.mailbox_breakers = mailbox_breakers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield _gauge("uptime_seconds", "Seconds since the process started", {"component": self.component},
                     self.liveness.uptime_s())
        family = GaugeMetricFamily(f"{NS}_circuit_breaker_state",
                                   "Circuit breaker state: 0 closed, 1 half-open, 2 open", labels=["name", "component"])
        for breaker in self.breakers:
            family.add_metric([breaker.name, self.component], float(breaker.state))
        if self.mailbox_breakers is None:
            yield family
            return
        # Several mailboxes per producer: the process-wide gauge is the worst of each kind
        # (what the alert and the dashboard read); the per-mailbox one tells them apart.
        rows = list(self.mailbox_breakers())
        per_mailbox = GaugeMetricFamily(f"{NS}_mailbox_circuit_breaker_state",
                                        "Circuit breaker state per mailbox: 0 closed, 1 half-open, 2 open",
                                        labels=["name", "component", "account", "mailbox"])
        worst: dict[str, float] = {}
        for account, mailbox, breaker in rows:
            per_mailbox.add_metric([breaker.name, self.component, account, mailbox], float(breaker.state))
            worst[breaker.name] = max(worst.get(breaker.name, 0.0), float(breaker.state))
        for name, state in sorted(worst.items()):
            family.add_metric([name, self.component], state)
        yield family
        yield per_mailbox


def _gauge(name: str, doc: str, labels: dict[str, str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{NS}_{name}", doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family
