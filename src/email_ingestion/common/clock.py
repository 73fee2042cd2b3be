"""Wall-clock time in milliseconds: the default clock every component takes by injection."""

from __future__ import annotations

import time
from collections.abc import Callable

# Components accept `clock_ms: Clock = wall_ms` so tests can pass time in.
Clock = Callable[[], int]


def wall_ms() -> int:
    return int(time.time() * 1000)
