"""How the pages write durations."""

from __future__ import annotations


def duration(seconds: float) -> str:
    """A human duration: 42s, 3m 05s, 2h 10m, 4d 3h."""
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
