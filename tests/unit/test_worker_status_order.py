"""A two-stream worker's /status body never counts a message as processed while showing it
pending (issue 18: test_worker_streams_variable_with_endpoints_and_sigterm failed 1 in 4)."""

from __future__ import annotations

from types import SimpleNamespace

import email_ingestion.worker.streams as streams
from email_ingestion.worker.loop import WorkerStats


class FakeLoop:
    """A stream loop whose last batch (`batch` entries) settles while /status is being read."""

    def __init__(self, stream: str, batch: int) -> None:
        self.loop = SimpleNamespace(stream=stream, consumer="w", group="g")
        self.stats = WorkerStats()
        self.pending = batch
        self.liveness = SimpleNamespace(alive=lambda: True, uptime_s=lambda: 1.0)
        self.breaker = SimpleNamespace(name="redis", snapshot=lambda: {})
        self.redis_wait = SimpleNamespace(reason=None)

    def status(self) -> dict:
        return {"counters": self.stats.counters(), "retries_waiting": 0, "handler_outage": None}

    def settle(self) -> None:
        # As the processor does: acknowledge (pending drops), then count.
        self.stats.processed, self.pending = self.stats.processed + self.pending, 0


def test_counters_are_read_before_the_figures(monkeypatch):
    """Each stream's batch settles just after its figures are read: the body's processed plus
    pending still adds up to the entries, never more (counters first, then figures)."""
    loops = [FakeLoop("a", 30), FakeLoop("b", 20)]

    def figures(loop: FakeLoop) -> dict:
        read = {"stream_depth": 0, "dlq_depth": 0, "pending": loop.pending, "lag": 0, "group_exists": True}
        loop.settle()
        return read
    monkeypatch.setattr(streams, "_figures", figures)
    body = streams.StreamWorkers(loops).status("h")  # type: ignore[arg-type]
    assert body["counters"]["processed"] + body["figures"]["pending"] == 50
