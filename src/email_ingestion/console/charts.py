"""Line charts as SVG, drawn on the server: no charting script, nothing for the CSP to allow.

A chart is a polyline over a fixed view box plus a few labels; the template draws it. Our own
twenty lines rather than a library: the pages need two small per-minute series, and any
JavaScript charting library would need a script (and a build or a vendored copy) to do it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

WIDTH, HEIGHT, PAD = 600, 120, 4


@dataclass(frozen=True)
class Chart:
    title: str
    points: str  # "x,y x,y ..." for <polyline points=...>
    top_label: str
    last_label: str
    width: int = WIDTH
    height: int = HEIGHT


def line_chart(title: str, values: list[int | None], label: Callable[[int], str]) -> Chart:
    """Missing values (None) are drawn as 0 for counts; series with gaps start a new segment
    only in spirit: a flat line at 0 reads right for "nothing handled that minute"."""
    numbers = [v or 0 for v in values]
    top = max(numbers, default=0) or 1
    step = (WIDTH - 2 * PAD) / max(len(numbers) - 1, 1)
    points = " ".join(f"{PAD + i * step:.1f},{HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD):.1f}"
                      for i, v in enumerate(numbers))
    last = next((v for v in reversed(values) if v is not None), None)
    return Chart(title, points, label(max(numbers, default=0)), "-" if last is None else label(last))
