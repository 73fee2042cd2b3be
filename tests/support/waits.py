"""Polling with a deadline, for tests that watch another process."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.02) -> bool:
    """True as soon as `predicate()` is true; False if it is still false after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def finish(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str]:
    """Exit status and stderr of a process expected to end by itself within `timeout_s`."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"process still running after {timeout_s}s: {(err or '')[-2000:]}") from None
    return proc.returncode, err or ""
