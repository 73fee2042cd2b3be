"""Prometheus metrics, each process with its own registry (nothing registered at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from src import __version__

NS = "email_ingestion"


class ProducerMetrics:
    """Producer metrics for one mailbox; labels stay low-cardinality (account, mailbox)."""

    def __init__(self, account: str, mailbox: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, labels = self.registry, ("account", "mailbox")

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{NS}_{name}", doc, labels, registry=r).labels(account, mailbox)

        self.produced = counter("emails_produced_total", "Emails appended to the stream")
        self.dedup_skipped = counter("producer_duplicates_skipped_total", "Emails not appended because already emitted")
        self.polls = counter("imap_polls_total", "Sync passes against the mailbox")
        self.uidvalidity_changes = counter("uidvalidity_changes_total", "UIDVALIDITY changes seen")
        self.throttled = counter("imap_throttled_total", "Throttling answers from the IMAP server")
        self.reconnects = counter("imap_reconnects_total", "IMAP/Redis reconnect attempts after a failure")
        self.oauth_refreshes = counter("oauth_refresh_total", "OAuth2 access token refreshes")
        self.oauth_failures = counter("oauth_refresh_failures_total", "OAuth2 refreshes that failed")
        self.poll_duration = Histogram(f"{NS}_imap_poll_duration_seconds", "Duration of one sync pass", labels,
                                       registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
                                       ).labels(account, mailbox)
        self.backpressure = Gauge(f"{NS}_producer_backpressure", "1 while fetching is paused for backpressure",
                                  labels, registry=r).labels(account, mailbox)
        self.last_uid = Gauge(f"{NS}_producer_last_uid", "Last UID safely in the stream", labels,
                              registry=r).labels(account, mailbox)
        Gauge(f"{NS}_build_info", "Build information", ("version", "component"),
              registry=r).labels(__version__, "producer").set(1)


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
        self.latency = Histogram(f"{NS}_processing_latency_seconds", "Handler duration", labels, registry=r,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)).labels(stream, group)
        self.end_to_end = Histogram(f"{NS}_end_to_end_latency_seconds", "Mailbox arrival to handler done",
                                    labels, registry=r, buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)
                                    ).labels(stream, group)
        Gauge(f"{NS}_build_info", "Build information", ("version", "component"),
              registry=r).labels(__version__, "worker").set(1)
