"""A time budget for building one message, enforced from outside the building thread.

Linear parsers and capped headers make a message cheap, but the stdlib's email package has
pure-Python loops that are quadratic on hostile input (RFC 2231 parameters, deep MIME), and
a loop cannot be asked to stop from inside. A watchdog thread raises BudgetExceeded in the
building thread (PyThreadState_SetAsyncExc) when a message overruns; the builder catches it
and emits a degraded payload. The exception arrives at the next bytecode boundary, so C code
already running (one regex match) finishes first: that is why the patterns are linear too.

An asynchronous exception can land where Python swallows it: in a garbage-collector
callback or a `__del__` ("Exception ignored in ..."), and the build would then run on with
no budget at all. So the watchdog raises again every tick until the build's guard exits.
"""

from __future__ import annotations

import ctypes
import threading
import time
from types import TracebackType

from email_ingestion.common.errors import BudgetExceeded

TICK_S = 0.05  # how late an overrun may be noticed


def _raise_in(thread_id: int, exc_type: type[BaseException] | None) -> None:
    # None clears an exception that was set but not yet raised.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
                                               if exc_type else ctypes.c_void_p(0))


class Watchdog:
    """One per process; `guard()` around each message's build."""

    def __init__(self, *, budget_s: float) -> None:
        self.budget_s = budget_s
        self._lock = threading.Lock()
        self._armed: dict[int, float] = {}  # building thread id -> deadline (monotonic)
        self._fired: set[int] = set()
        self._active = threading.Event()
        self._thread: threading.Thread | None = None

    def guard(self) -> _Guard:
        return _Guard(self)

    def _arm(self, thread_id: int) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="build-watchdog", daemon=True)
                self._thread.start()
            self._armed[thread_id] = time.monotonic() + self.budget_s
            self._fired.discard(thread_id)
            self._active.set()

    def _disarm(self, thread_id: int) -> bool:
        """True when the budget ran out for this build (its exception may still be pending)."""
        with self._lock:
            self._armed.pop(thread_id, None)
            fired = thread_id in self._fired
            self._fired.discard(thread_id)
            if fired:
                _raise_in(thread_id, None)
            return fired

    def _watch(self) -> None:
        while True:
            self._active.wait()
            time.sleep(TICK_S)
            with self._lock:
                now = time.monotonic()
                for thread_id in [t for t, deadline in self._armed.items() if deadline <= now]:
                    # Again next tick, until the guard exits: the exception may be swallowed.
                    self._armed[thread_id] = now + TICK_S
                    self._fired.add(thread_id)
                    _raise_in(thread_id, BudgetExceeded)
                if not self._armed:
                    self._active.clear()


class _Guard:
    __slots__ = ("_watchdog", "_thread_id")

    def __init__(self, watchdog: Watchdog) -> None:
        self._watchdog = watchdog
        self._thread_id = threading.get_ident()

    def __enter__(self) -> None:
        self._watchdog._arm(self._thread_id)  # noqa: SLF001 - the guard is the watchdog's own helper

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        fired = False
        while True:  # a repeated raise may land here, before the disarm has taken the lock
            try:
                fired = self._watchdog._disarm(self._thread_id) or fired  # noqa: SLF001
                break
            except BudgetExceeded:
                fired = True
        if fired and exc_type is None:
            raise BudgetExceeded(f"message build took longer than {self._watchdog.budget_s} s")
