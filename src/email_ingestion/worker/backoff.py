"""The retry schedule: exponential backoff with full jitter (AWS Architecture Blog, 2015).

delay(n) = uniform(0, min(cap, base * factor ** (n - 1))) for the n-th retry. Full jitter
spreads a burst of failures (a webhook endpoint down for a minute) instead of
re-synchronising them into waves.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 10.0
    factor: float = 2.0
    cap_s: float = 600.0
    max_retries: int = 3

    def ceiling_s(self, retry: int) -> float:
        """Upper bound of the delay before retry number `retry` (1-based)."""
        exponent = max(retry - 1, 0)
        # Guard the power: factor ** 2000 overflows long before the cap matters.
        if exponent > 64:
            return self.cap_s
        return min(self.cap_s, self.base_s * self.factor ** exponent)

    def delay_s(self, retry: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, self.ceiling_s(retry))

    def gives_up_after(self, attempts: int) -> bool:
        """True when `attempts` failed attempts exhaust the retries (first try + max_retries)."""
        return attempts > self.max_retries
