"""Waiting out a Redis that cannot serve us for now: down or restarting, loading its
dataset (LOADING), a read-only replica after a failover (READONLY), or full (OOM under
maxmemory). The worker backs off, stays alive for /health, reports not ready on /ready,
and tries again; a refused password is not waited out (AuthError, exit 3).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.common.errors import AuthError, RedisTlsError, RedisUnavailableError
from email_ingestion.common.redis_client import RedisFault, classify, is_trust_failure, trust_message
from email_ingestion.monitoring.health import Liveness

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that may pass by themselves: classify() (common/redis_client.py) decides, for the
# producer, the worker and the tools alike. NoScriptError (a Redis restarted inside
# redis-py's own retry of a pipeline forgot its scripts) is one of them: a new attempt
# builds a new pipeline, which loads them again. RedisUnavailableError is raised by our
# own boundary (e.g. fewer replicas than REDIS_WAIT_REPLICAS acknowledged); the settlement
# it follows is safe to replay.
WAIT_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, RedisUnavailableError, OSError)
MAX_DELAY_S = 30.0


def is_waitable(exc: BaseException) -> bool:
    """A failure the worker waits out rather than exits on."""
    return isinstance(exc, redis.exceptions.NoScriptError) or classify(exc) is RedisFault.TRANSIENT


class Interrupted(Exception):  # noqa: N818 - control flow, not an error
    """Raised out of RedisWait.call when the worker must stop before Redis came back."""


class RedisWait:
    def __init__(self, stop_event: threading.Event, liveness: Liveness, breaker: CircuitBreaker) -> None:
        self.stop_event = stop_event
        self.liveness = liveness
        self.breaker = breaker
        self.failures = 0
        self.reason: str | None = None  # why Redis cannot serve us, while it cannot

    def call(self, action: Callable[[], T], where: str, give_up: Callable[[], bool] = lambda: False,
             max_delay_s: float = MAX_DELAY_S) -> T:
        """Run `action` until it gets past Redis's temporary refusals, trying again at
        least every `max_delay_s`."""
        while True:
            try:
                value = self.guard(action)
            except WAIT_ERRORS as exc:
                if not is_waitable(exc):
                    raise
                self.failed(exc, where, max_delay_s)
                if give_up():
                    raise Interrupted(where) from exc
                continue
            self.succeeded()
            return value

    def guard(self, action: Callable[[], T]) -> T:
        """Run `action`; refused credentials, ACL or TLS trust become AuthError-family
        errors (a person must act), whatever redis-py called them."""
        try:
            return action()
        except WAIT_ERRORS as exc:
            if classify(exc) is not RedisFault.CONFIGURATION:
                raise
            if is_trust_failure(exc):  # an untrusted TLS certificate: waiting cannot help
                raise RedisTlsError(trust_message(exc)) from None
            raise AuthError(f"Redis refused this worker's credentials ({type(exc).__name__}: {exc}); "
                            f"check REDIS_URL/REDIS_PASSWORD and the ACL") from None

    def failed(self, exc: BaseException, where: str, max_delay_s: float = MAX_DELAY_S) -> None:
        """Note the failure, then wait with exponential backoff (never past a stop request)."""
        self.failures += 1
        self.breaker.failure()
        self.reason = f"Redis unavailable during {where}: {type(exc).__name__}: {exc}"
        delay_s = min(max_delay_s, max(min(MAX_DELAY_S, 0.25 * 2 ** min(self.failures, 7)), self.breaker.wait_s()))
        log.warning("Redis unavailable; retrying", extra={"error": self.reason, "retry_in_s": round(delay_s, 2)})
        self._sleep(delay_s)

    def succeeded(self) -> None:
        if self.failures:
            log.info("Redis is serving again", extra={"after_failures": self.failures})
        self.failures = 0
        self.reason = None
        self.breaker.success()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.liveness.tick()
            self.stop_event.wait(min(1.0, deadline - time.monotonic()))
