"""The per-message CPU budget, kept inside the helper process that builds payloads.

Why a process and not an exception (issue 18): linear parsers and capped headers make a
message cheap, but the stdlib's email package has pure-Python loops that are quadratic on
hostile input, and a loop cannot be asked to stop from inside. The previous watchdog raised
an asynchronous exception into the building thread; that exception lands wherever the
thread happens to be (a gc callback, logging, a library's cleanup) and was once swallowed
there, and it counted wall-clock time, so on a loaded host healthy messages were cut off
for waiting for a CPU. Checking the clock cooperatively at safe points would never fire in
the wrong place, but it cannot stop a quadratic loop inside the stdlib either.

So the build runs in a helper process (build_site.py). Here, in that process, a watchdog
thread reads the building thread's own CPU clock (pthread_getcpuclockid: time spent waiting
for a CPU does not count) and, when one message has used more than its budget, reports the
message and stage on the pipe and ends the process with os._exit. Nothing is raised into any
code; the parent sees the report, builds the degraded payload and starts a fresh helper
(as rq's work horse is killed by its parent at the deadline).

The watchdog is Python code: it needs the GIL, so it cannot run while the building thread
holds it in one long C call (a regex that backtracks; a 6 s call went unnoticed). The parent
therefore also reads the helper's CPU time from outside (`process_cpu_s`) and ends a helper
whose message has used more than its build and salvage budgets together (build_site.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

TICK_S = 0.05  # how late an overrun may be noticed, in wall time
OVERRUN_EXIT = 86  # the helper's exit status after an overrun


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by another process, read from outside it;
    None where there is no /proc (macOS) or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # proc(5): the fields after the ")" that closes the command name; utime, stime are 14, 15.
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s(thread_id: int) -> float:
    """CPU seconds used so far by one thread of this process. Where threads have no CPU
    clock of their own (macOS), the process's: in the helper that is the building thread
    plus a watchdog that sleeps."""
    if not hasattr(time, "pthread_getcpuclockid"):
        return time.process_time()
    return time.clock_gettime(time.pthread_getcpuclockid(thread_id))


class CpuWatchdog:
    """Watches one building thread: `start(uid)` before a message, `stage(...)` as it moves on,
    `stop()` after it. On overrun `report(uid, stage, used_s)` runs, then the process exits."""

    def __init__(self, *, budget_s: float, report: Callable[[int, str, float], None],
                 thread_id: int | None = None) -> None:
        self.budget_s = budget_s
        self._report = report
        self._thread_id = thread_id if thread_id is not None else threading.get_ident()
        self._lock = threading.Lock()
        self._uid: int | None = None
        self._stage = ""
        self._started_s = 0.0
        self._armed = threading.Event()
        threading.Thread(target=self._watch, name="build-budget", daemon=True).start()

    def start(self, uid: int) -> None:
        with self._lock:
            self._uid, self._stage = uid, "parse"
            self._started_s = thread_cpu_s(self._thread_id)
            self._armed.set()

    def stage(self, stage: str) -> None:
        with self._lock:
            self._stage = stage
            if stage == "salvage":  # the salvage of a message that raised gets a budget of its own
                self._started_s = thread_cpu_s(self._thread_id)

    def stop(self) -> None:
        # Under the lock: once stop() returns, no overrun can be reported for this message.
        with self._lock:
            self._uid = None
            self._armed.clear()

    def _watch(self) -> None:
        while True:
            self._armed.wait()
            time.sleep(TICK_S)
            with self._lock:
                if self._uid is None:
                    continue
                used_s = thread_cpu_s(self._thread_id) - self._started_s
                if used_s > self.budget_s:
                    self._report(self._uid, self._stage, used_s)
                    os._exit(OVERRUN_EXIT)
