"""Progress lines for long syncs: done/total, rate and ETA at a steady interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Progress:
    def __init__(self, *, total: int, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.done = 0
        self.interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._last_report = self._started

    def advance(self, count: int) -> None:
        self.done += count
        now = self._clock()
        if now - self._last_report >= self.interval_s and self.done < self.total:
            self._last_report = now
            log.info("sync progress", extra=self.snapshot(now))

    def snapshot(self, now: float | None = None) -> dict[str, float | int | None]:
        elapsed_s = max((now or self._clock()) - self._started, 1e-9)
        rate = self.done / elapsed_s
        remaining = self.total - self.done
        return {"done": self.done, "total": self.total, "rate_per_s": round(rate, 1),
                "eta_s": round(remaining / rate, 1) if rate > 0 else None}
