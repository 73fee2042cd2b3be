"""Prometheus metrics, each process with its own registry (nothing registered at import)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from email_ingestion import __version__

NS = "email_ingestion"


class ProducerFamilies:
    """The producer's metric families in one registry, created once per process however many
    mailboxes it follows; ProducerMetrics is one mailbox's labelled children of them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        labels = ("account", "mailbox")

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{NS}_{name}", doc, labels, registry=r)

        self.produced = counter("emails_produced_total", "Emails appended to the stream")
        self.dedup_skipped = counter("producer_duplicates_skipped_total", "Emails not appended because already emitted")
        self.polls = counter("imap_polls_total", "Sync passes against the mailbox")
        self.uidvalidity_changes = counter("uidvalidity_changes_total", "UIDVALIDITY changes seen")
        self.throttled = counter("imap_throttled_total", "Throttling answers from the IMAP server")
        self.reconnects = counter("imap_reconnects_total", "IMAP/Redis reconnect attempts after a failure")
        self.oauth_refreshes = counter("oauth_refresh_total", "OAuth2 access token refreshes")
        self.oauth_failures = counter("oauth_refresh_failures_total", "OAuth2 refreshes that failed")
        self.expunged_skipped = counter("producer_expunged_skipped_total",
                                        "Messages expunged between SEARCH and FETCH, skipped (never emitted)")
        self.poll_duration = Histogram(f"{NS}_imap_poll_duration_seconds", "Duration of one sync pass", labels,
                                       registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.backpressure = Gauge(f"{NS}_producer_backpressure", "1 while fetching is paused for backpressure",
                                  labels, registry=r)
        self.last_uid = Gauge(f"{NS}_producer_last_uid", "Last UID safely in the stream", labels, registry=r)
        self.owned = Gauge(f"{NS}_producer_mailbox_owned",
                           "1 while this producer holds the mailbox's lease and follows it", labels, registry=r)
        self.failed = Gauge(f"{NS}_producer_mailbox_failed",
                            "1 while the mailbox is stopped by a permanent error (credentials, missing folder)",
                            labels, registry=r)
        Gauge(f"{NS}_build_info", "Build information", ("version", "component"),
              registry=r).labels(__version__, "producer").set(1)


class ProducerMetrics:
    """Producer metrics for one mailbox; labels stay low-cardinality (account, mailbox)."""

    def __init__(self, account: str, mailbox: str, families: ProducerFamilies | CollectorRegistry | None = None
                 ) -> None:
        if not isinstance(families, ProducerFamilies):
            families = ProducerFamilies(families)
        self.registry = families.registry
        f, labels = families, (account, mailbox)
        self.produced = f.produced.labels(*labels)
        self.dedup_skipped = f.dedup_skipped.labels(*labels)
        self.polls = f.polls.labels(*labels)
        self.uidvalidity_changes = f.uidvalidity_changes.labels(*labels)
        self.throttled = f.throttled.labels(*labels)
        self.reconnects = f.reconnects.labels(*labels)
        self.oauth_refreshes = f.oauth_refreshes.labels(*labels)
        self.oauth_failures = f.oauth_failures.labels(*labels)
        self.expunged_skipped = f.expunged_skipped.labels(*labels)
        self.poll_duration = f.poll_duration.labels(*labels)
        self.backpressure = f.backpressure.labels(*labels)
        self.last_uid = f.last_uid.labels(*labels)
        self.owned = f.owned.labels(*labels)
        self.failed = f.failed.labels(*labels)


class HotHistogram(Collector):
    """A histogram for one thread's hot path: observe() is a bisect and two additions.

    prometheus_client's Histogram takes a lock and updates every bucket per observation
    (~4 µs); a worker observes two per message, which was a seventh of its time per message.
    Observations must come from one thread (the worker's loop); scrapes may come from any.
    """

    def __init__(self, name: str, documentation: str, labels: dict[str, str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = sorted(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*self.bounds, math.inf], counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), buckets, total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))


class WorkerMetrics:
    """Worker metrics; labels stay low-cardinality (stream, group)."""

    def __init__(self, stream: str, group: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, ("stream", "group")

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{NS}_{name}", doc, labels, registry=r).labels(stream, group)

        self.processed = counter("emails_processed_total", "Emails handled successfully")
        self.failed = counter("emails_failed_total", "Handler attempts that failed")
        self.dead_lettered = counter("dlq_messages_total", "Messages moved to the DLQ")
        self.retries = counter("backoff_retries_total", "Retries scheduled with backoff")
        self.duplicates = counter("duplicates_total", "Deliveries skipped because already handled")
        self.orphans = counter("orphans_claimed_total", "Pending messages reclaimed from dead consumers")
        values = {"stream": stream, "group": group}
        self.latency = HotHistogram(f"{NS}_processing_latency_seconds", "Handler duration", values,
                                    (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), r)
        self.end_to_end = HotHistogram(f"{NS}_end_to_end_latency_seconds", "Mailbox arrival to handler done", values,
                                       (0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600), r)
        Gauge(f"{NS}_build_info", "Build information", ("version", "component"),
              registry=r).labels(__version__, "worker").set(1)
