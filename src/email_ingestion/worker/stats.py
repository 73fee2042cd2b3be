"""A worker's counters: what its loops have done since it started."""

from __future__ import annotations

from dataclasses import dataclass

from email_ingestion.worker.batch import BatchResult


@dataclass
class WorkerStats:
    batches: int = 0
    processed: int = 0
    failed: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    reclaimed: int = 0
    first_read_at: float | None = None  # monotonic: when the first batch arrived
    last_settled_at: float | None = None  # monotonic: when the last batch was settled

    def add(self, result: BatchResult) -> None:
        """Count one settled batch."""
        self.batches += 1
        self.processed += result.processed
        self.failed += result.failed
        self.dead_lettered += result.dead_lettered
        self.duplicates += result.duplicates

    def merge(self, other: WorkerStats) -> None:
        """Add another loop's counters (several streams, one process)."""
        self.batches += other.batches
        self.processed += other.processed
        self.failed += other.failed
        self.dead_lettered += other.dead_lettered
        self.duplicates += other.duplicates
        self.reclaimed += other.reclaimed
        self.first_read_at = _earliest(self.first_read_at, other.first_read_at)
        self.last_settled_at = _latest(self.last_settled_at, other.last_settled_at)

    def counters(self) -> dict[str, int]:
        return {"batches": self.batches, "processed": self.processed, "failed": self.failed,
                "dead_lettered": self.dead_lettered, "duplicates": self.duplicates, "reclaimed": self.reclaimed}

    @property
    def busy_s(self) -> float:
        if self.first_read_at is None or self.last_settled_at is None:
            return 0.0
        return self.last_settled_at - self.first_read_at


def _earliest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
