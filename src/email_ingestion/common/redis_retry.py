"""redis-py's transparent retries, made visible (issue 19 item 13).

redis-py retries a command that met a connection error or a timeout on a new connection;
a partition shorter than its retries leaves no trace at all, and a longer one is reported
only when the retries are spent, long after it began. `LoggedRetry` is the same policy
with the first failure of a run logged at once (WARNING) and the first success after it
(INFO): one line each per outage, whoever retries. It is subclassed rather than wrapped
because redis-py deep-copies the retry object into every connection; the copies share one
record of the outage, so a pool of connections logs it once.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from redis.backoff import AbstractBackoff
from redis.retry import Retry

log = logging.getLogger("email_ingestion.redis")

T = TypeVar("T")


class _Outage:
    """Whether the client's commands are failing now, shared by its connections."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failing_since: float | None = None

    def failed(self, error: BaseException) -> None:
        with self.lock:
            if self.failing_since is not None:
                return
            self.failing_since = time.monotonic()
        if not log.hasHandlers():
            # An operator command that configured no logging says what failed in its own
            # one line; Python's last-resort handler would add this one to stderr.
            return
        log.warning("Redis command failed; retrying on a new connection",
                    extra={"error": f"{type(error).__name__}: {error}"[:500]})

    def succeeded(self) -> None:
        if self.failing_since is None:  # the hot path: no lock
            return
        with self.lock:
            since, self.failing_since = self.failing_since, None
        if since is not None:
            log.info("Redis commands succeed again", extra={"after_s": round(time.monotonic() - since, 2)})


class LoggedRetry(Retry):
    def __init__(self, backoff: AbstractBackoff, retries: int, *, outage: _Outage | None = None) -> None:
        super().__init__(backoff, retries)
        self._outage = outage or _Outage()

    def __deepcopy__(self, memo: dict[int, Any]) -> LoggedRetry:
        twin = LoggedRetry(copy.deepcopy(self._backoff, memo), self._retries, outage=self._outage)
        twin._supported_errors = self._supported_errors
        return twin

    def call_with_retry(self, do: Callable[[], T], fail: Callable[..., Any],
                        is_retryable: Callable[[Exception], bool] | None = None,
                        with_failure_count: bool = False) -> T:
        outage = self._outage

        def noted(error: Exception, *count: int) -> Any:
            outage.failed(error)
            return fail(error, *count)

        value = super().call_with_retry(do, noted, is_retryable, with_failure_count)
        outage.succeeded()
        return value
