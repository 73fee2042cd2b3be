"""The soft deadline of a handler call (HANDLER_TIMEOUT_SECONDS), watched from a thread.

Python cannot stop a thread, so a hung call is not interrupted: past its timeout the
watcher hands the call's index to `on_timeout`, which records it as failed (reason
`timeout`), settles what the batch has done, gives back the rest and ends the process for
its supervisor to restart (timeout_exit.py). Nothing the hung call holds stays alive: not its
leases, not the heartbeat. When the call holds the GIL this thread cannot run at all; the
kernel timer (kernel_timer.py) ends the process GRACE_S later instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from email_ingestion.worker.kernel_timer import GRACE_S, REFRESH_S, KernelTimer

# A timed-out batch's settlement is tried for this long before the process exits anyway
# (what it could not settle stays pending and is handled again).
TIMEOUT_SETTLE_S = 10.0


class Deadline:
    """Per stream loop: the timeout of each call and the process-wide kernel timer."""

    def __init__(self, *, timeout_s: float, timer: KernelTimer) -> None:
        self.timeout_s = timeout_s
        self.timer = timer

    def watch(self, on_timeout: Callable[[int], None]) -> CallWatch:
        return CallWatch(self, on_timeout)


class CallWatch:
    """While one batch's calls run: notices a call past its timeout."""

    def __init__(self, deadline: Deadline, on_timeout: Callable[[int], None]) -> None:
        self.deadline = deadline
        self.on_timeout = on_timeout
        self._caller = threading.get_ident()
        self._lock = threading.Lock()
        self._call: tuple[int, float] | None = None  # (index in the batch, monotonic start)
        self._armed_at = -REFRESH_S  # monotonic: when this batch last set the kernel deadline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="call-deadline", daemon=True)

    def __enter__(self) -> CallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.deadline.timer.clear()
        if self._thread.is_alive():
            self._thread.join(5)

    def calling(self, index: int) -> None:
        """Before one handler call; `called()` after it, in a finally. (An assignment the
        watcher reads whole: no lock needed on this side.)"""
        now = time.monotonic()
        if now - self._armed_at > REFRESH_S:
            self.deadline.timer.extend(self._caller, self.deadline.timeout_s + GRACE_S, now)
            self._armed_at = now
        self._call = (index, now)

    def called(self) -> None:
        """If the call timed out meanwhile, the process is ending: block here rather than
        record an outcome the timeout already recorded."""
        with self._lock:
            self._call = None

    def pause(self) -> None:
        """Between calls, before a settlement: no kernel deadline while Redis is waited for."""
        self.deadline.timer.clear()
        self._armed_at = -REFRESH_S

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait_s()):
            if self._timed_out():
                return

    def _next_wait_s(self) -> float:
        call = self._call
        if call is None:
            return min(1.0, self.deadline.timeout_s)
        return max(0.01, call[1] + self.deadline.timeout_s - time.monotonic())

    def _timed_out(self) -> bool:
        with self._lock:
            call = self._call
            if call is None or time.monotonic() - call[1] < self.deadline.timeout_s:
                return False
            # The settlement before the exit gets its own time; past it the kernel ends us.
            self.deadline.timer.extend(self._caller, TIMEOUT_SETTLE_S + GRACE_S)
            self.on_timeout(call[0])  # ends the process while holding the lock
        return True
