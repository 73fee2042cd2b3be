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
        self.gmail_waiting = Gauge(f"{NS}_gmail_download_waiting",
                                   "1 while bodies wait for the account's GMAIL_DAILY_DOWNLOAD_MB budget",
                                   labels, registry=r)
        self.gmail_used = Gauge(f"{NS}_gmail_downloaded_bytes_24h", "Body bytes downloaded in the last 24 hours",
                                labels, registry=r)
        self.label_events = counter("gmail_label_events_total", "labels_changed events appended (GMAIL_LABEL_EVENTS)")
        self.credentials = Gauge(f"{NS}_producer_mailbox_credentials",
                                 "1 while the mailbox waits for a person to re-authorise (invalid_grant)",
                                 labels, registry=r)
        self.sync_done = Gauge(f"{NS}_sync_progress_done", "Messages done in the sync step in progress",
                               labels, registry=r)
        self.sync_total = Gauge(f"{NS}_sync_progress_total", "Messages the sync step in progress covers (from "
                                "the folder's message count)", labels, registry=r)
        self.sync_rate = Gauge(f"{NS}_sync_progress_rate", "Messages per second of the sync step in progress",
                               labels, registry=r)
        self.sync_eta = Gauge(f"{NS}_sync_progress_eta_seconds", "Estimated seconds left in the sync step",
                              labels, registry=r)
        self.last_uid = Gauge(f"{NS}_producer_last_uid", "Last UID safely in the stream", labels, registry=r)
        self.owned = Gauge(f"{NS}_producer_mailbox_owned",
                           "1 while this producer holds the mailbox's lease and follows it", labels, registry=r)
        self.failed = Gauge(f"{NS}_producer_mailbox_failed",
                            "1 while the mailbox is stopped by a permanent error (credentials, missing folder)",
                            labels, registry=r)
        self.folder_missing = Gauge(f"{NS}_producer_folder_missing",
                                    "1 while the followed folder, which existed before, is missing (retried)",
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
        self.gmail_waiting = f.gmail_waiting.labels(*labels)
        self.credentials = f.credentials.labels(*labels)
        self.sync_done = f.sync_done.labels(*labels)
        self.sync_total = f.sync_total.labels(*labels)
        self.sync_rate = f.sync_rate.labels(*labels)
        self.sync_eta = f.sync_eta.labels(*labels)
        self.gmail_used = f.gmail_used.labels(*labels)
        self.label_events = f.label_events.labels(*labels)
        self.owned = f.owned.labels(*labels)
        self.failed = f.failed.labels(*labels)
        self.folder_missing = f.folder_missing.labels(*labels)


class HotHistogram(Collector):
    """A histogram for one thread's hot path: observe() is a bisect and two additions.

    prometheus_client's Histogram takes a lock and updates every bucket per observation
    (~4 µs); a worker observes two per message, which was a seventh of its time per message.
    Observations must come from one thread (the worker's loop of one stream); scrapes may come
    from any. Without a registry it is a child of a HotHistogramFamily.
    """

    def __init__(self, name: str, documentation: str, labels: dict[str, str], buckets: Sequence[float],
                 registry: CollectorRegistry | None) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = sorted(buckets)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        if registry is not None:
            registry.register(self)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sum += value

    def add_to(self, family: HistogramMetricFamily) -> None:
        """Add this label set's buckets and sum to `family`."""
        counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, count in zip([*self.bounds, math.inf], counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), cumulative))
        family.add_metric(list(self.labels.values()), buckets, total)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))
        self.add_to(family)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=list(self.labels))


class HotHistogramFamily(Collector):
    """Several label sets of one HotHistogram name in one registry (a worker reading several
    streams has one child per stream, each observed by its own stream's thread only)."""

    def __init__(self, name: str, documentation: str, label_names: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = list(label_names)
        self.buckets = buckets
        self._children: list[HotHistogram] = []
        registry.register(self)

    def labels(self, *values: str) -> HotHistogram:
        child = HotHistogram(self.name, self.documentation, dict(zip(self.label_names, values, strict=True)),
                             self.buckets, None)
        self._children.append(child)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for child in list(self._children):
            child.add_to(family)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)


_WORKER_COUNTERS = (
    ("processed", "emails_processed_total", "Emails handled successfully"),
    ("failed", "emails_failed_total", "Handler attempts that failed"),
    ("dead_lettered", "dlq_messages_total", "Messages moved to the DLQ"),
    ("retries", "backoff_retries_total", "Retries scheduled with backoff"),
    ("duplicates", "duplicates_total", "Deliveries skipped because already handled"),
    ("orphans", "orphans_claimed_total", "Pending messages reclaimed from dead consumers"),
)


class WorkerMetricFamilies:
    """The worker's metric families in one registry; a WorkerMetrics per (stream, group) takes
    its children, so a worker reading several streams exports each name once, labelled by stream."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        labels = ("stream", "group")
        self.counters = {attr: Counter(f"{NS}_{name}", doc, labels, registry=r) for attr, name, doc in _WORKER_COUNTERS}
        self.latency = HotHistogramFamily(f"{NS}_processing_latency_seconds", "Handler duration", labels,
                                          (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30), r)
        self.end_to_end = HotHistogramFamily(f"{NS}_end_to_end_latency_seconds", "Mailbox arrival to handler done",
                                             labels, (0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600), r)
        self.handler_outage = Gauge(f"{NS}_worker_handler_outage",
                                    "1 while the handler outage breaker is open: the worker takes no messages "
                                    "and probes the handler with one now and then", labels, registry=r)
        Gauge(f"{NS}_build_info", "Build information", ("version", "component"),
              registry=r).labels(__version__, "worker").set(1)


class WorkerMetrics:
    """Worker metrics of one stream; labels stay low-cardinality (stream, group)."""

    def __init__(self, stream: str, group: str, registry: CollectorRegistry | None = None,
                 families: WorkerMetricFamilies | None = None) -> None:
        families = families or WorkerMetricFamilies(registry)
        self.registry = families.registry
        counter = {attr: family.labels(stream, group) for attr, family in families.counters.items()}
        self.processed = counter["processed"]
        self.failed = counter["failed"]
        self.dead_lettered = counter["dead_lettered"]
        self.retries = counter["retries"]
        self.duplicates = counter["duplicates"]
        self.orphans = counter["orphans"]
        self.latency = families.latency.labels(stream, group)
        self.end_to_end = families.end_to_end.labels(stream, group)
        self.handler_outage = families.handler_outage.labels(stream, group)
