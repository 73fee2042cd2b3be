"""Progress of long syncs: done/total, rate and ETA, as log lines at a steady interval, as
figures for /status and metrics (`on_advance`), and as a live bar when stderr is a terminal
(never in a journal or a pipe, where a bar would be noise)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)

BAR_WIDTH = 30
PROGRESS_TTL_S = 7 * 86400  # the last figures stay readable (keys.MailboxKeys.progress) this long


class Progress:
    def __init__(self, *, total: int, interval_s: float, clock: Callable[[], float] = time.monotonic,
                 label: str = "", on_advance: Callable[[Progress], None] = lambda _p: None,
                 terminal: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.interval_s = interval_s
        self.label = label
        self._clock = clock
        self._started = clock()
        self._last_report = self._started
        self._on_advance = on_advance
        stream = terminal or sys.stderr
        self._bar = stream if _is_terminal(stream) else None
        on_advance(self)

    def advance(self, count: int) -> None:
        self.done += count
        now = self._clock()
        self._on_advance(self)
        if self._bar is not None:
            self._draw(self._bar)
        if now - self._last_report >= self.interval_s and self.done < self.total:
            self._last_report = now
            log.info("sync progress", extra=self.snapshot(now))

    def snapshot(self, now: float | None = None) -> dict[str, float | int | None]:
        elapsed_s = max((now or self._clock()) - self._started, 1e-9)
        rate = self.done / elapsed_s
        remaining = max(self.total - self.done, 0)
        return {"done": self.done, "total": self.total, "rate_per_s": round(rate, 1),
                "eta_s": round(remaining / rate, 1) if rate > 0 else None}

    def _draw(self, stream: TextIO) -> None:
        figures = self.snapshot()
        filled = int(BAR_WIDTH * min(self.done, self.total) / self.total) if self.total else BAR_WIDTH
        eta = f"{figures['eta_s']:.0f} s" if figures["eta_s"] is not None else "?"
        stream.write(f"\r{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total} "
                     f"{figures['rate_per_s']}/s ETA {eta}\x1b[K")
        if self.done >= self.total:
            stream.write("\n")
        stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
