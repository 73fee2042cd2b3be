"""The hard deadline of a handler call: a kernel timer that ends the process (issue 19 item 7).

Why: the soft deadline (deadline.py) is a Python thread, and a handler stuck in C code that
holds the GIL (a catastrophic regular expression, a C extension's busy loop) never lets it
run: the worker would hang with its heartbeat lapsed, and the next worker would take the
message and hang the same way. The kernel does not need the GIL: SIGALRM with its default
action (SIG_DFL) terminates the process, however busy its interpreter is.

How: `install()` (in the worker's main thread, once) sets SIGALRM to SIG_DFL. Each stream
thread arms its own deadline before a handler call (deadline.CallWatch.calling); one process-wide ITIMER_REAL is set to
the earliest deadline of any thread in flight and cleared when none is. The deadline is
HANDLER_TIMEOUT_SECONDS plus GRACE_S, so the soft path (which records `timeout`, settles the
batch-mates and exits 1) runs first whenever the GIL is free; the kernel kill is for when it
is not. A message whose call was killed this way stays pending: each restart reclaims it
with one more delivery, and past MAX_DELIVERIES it goes to the DLQ (reason max_deliveries)
without being called again.

Cost: re-arming is a lock and a setitimer(2) call, so it is done lazily: a thread re-arms
only when its deadline was set more than REFRESH_S ago, and the kill then comes between
GRACE_S - REFRESH_S and GRACE_S after the soft deadline. The timer is cleared around
settlements (a settlement that waits out a Redis outage is not a hung handler).
Limits: SIGALRM belongs to the worker; a handler that installs its own SIGALRM handler or
calls signal.alarm() takes the hard deadline away (the soft one remains).
"""

from __future__ import annotations

import signal
import threading
import time

# The kernel kill comes this long after the soft deadline: room for the soft path to record
# the timeout and settle when the GIL is free.
GRACE_S = 5.0
REFRESH_S = GRACE_S / 2


class KernelTimer:
    """One process-wide ITIMER_REAL, set to the earliest deadline of any thread's call."""

    def __init__(self, *, timeout_s: float, enabled: bool = False) -> None:
        self.timeout_s = timeout_s
        self.enabled = enabled
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}  # thread id -> monotonic deadline

    def install(self) -> None:
        """From the main thread: let SIGALRM end the process, and enable the timer."""
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        self.enabled = True

    def extend(self, ident: int, seconds: float, now: float | None = None) -> None:
        """Thread `ident`'s deadline is `seconds` from now (the timeout path: time to settle)."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            self._deadlines[ident] = now + seconds
            self._set(now)

    def clear(self) -> None:
        """This thread has no call in flight (the batch's calls are over, or it settles)."""
        if not self.enabled or threading.get_ident() not in self._deadlines:
            return
        with self._lock:
            self._deadlines.pop(threading.get_ident(), None)
            self._set(time.monotonic())

    def _set(self, now: float) -> None:
        if not self._deadlines:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        signal.setitimer(signal.ITIMER_REAL, max(0.001, min(self._deadlines.values()) - now))
