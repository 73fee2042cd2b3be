"""A circuit breaker: closed (normal), open (failing: wait before trying), half-open (one try).

The breaker does not retry anything itself; the loops ask it how long to wait. While it is
open they back off for the rest of `reset_timeout_s` instead of spinning on a dead server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, name: str, failure_threshold: int = 5, reset_timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self.failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return State.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout_s:
            return State.HALF_OPEN
        return State.OPEN

    def wait_s(self) -> float:
        """How long to wait before the next attempt (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        assert self._opened_at is not None
        return max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))

    def success(self) -> None:
        self.failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self.failures += 1
        if self.state is State.HALF_OPEN or self.failures >= self.failure_threshold:
            self._opened_at = self._clock()

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state.name.lower(), "failures": self.failures}
