"""How much slower this machine is than the one the CPU budgets were set on, measured now.

The producer's per-message CPU budget (MESSAGE_BUDGET_S) is a product setting sized for the
machine it was tuned on. Tests that prove "within the budget" mean "linear, not quadratic":
a quadratic path costs minutes, a linear one a fraction of the budget. On a slower machine
(a CI runner, or one sharing its cores) the linear path costs more CPU seconds, so such tests
scale the budget by `slowness()` instead of assuming this machine's speed.
"""

from __future__ import annotations

import functools
import time

# CPU seconds `_reference_work` took on the development machine the budgets were set on
# (the best of several runs, while idle).
REFERENCE_CPU_S = 0.15


def _reference_work() -> int:
    """Pure-Python work of the kind a parser does (bytes splitting, decoding, dicts, loops),
    using no product code: a regression under test cannot make the machine look slower."""
    block = b"".join(b"X-Header-%d: value %d; param=%d\r\n" % (i, i * 7, i * 13) for i in range(150_000))
    seen: dict[str, int] = {}
    for line in block.split(b"\r\n"):
        name, _, value = line.decode("ascii").partition(":")
        seen[name.lower()] = len(value.strip().split(";"))
    return len(seen)


@functools.cache
def slowness() -> float:
    """How many times longer the reference work takes here than on the reference machine
    (at least 1: a faster machine keeps the product's budget). The best of five runs, so one
    run that shared its core with something else does not count."""
    best_s = float("inf")
    for _ in range(5):
        started = time.process_time()
        _reference_work()
        best_s = min(best_s, time.process_time() - started)
    return max(1.0, best_s / REFERENCE_CPU_S)


def scaled_budget_s(budget_s: float) -> float:
    """`budget_s` as it stands on this machine: longer where the same work costs more CPU."""
    return budget_s * slowness()
