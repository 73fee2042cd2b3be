"""Waiting out a Redis that cannot serve us for now: down or restarting, loading its
dataset (LOADING), a read-only replica after a failover (READONLY), full (OOM under
maxmemory), refusing writes after a failed save (MISCONF), short of replicas (NOREPLICAS),
busy with a script (BUSY), a cluster resharding or failing over (TRYAGAIN, CLUSTERDOWN,
MASTERDOWN): whatever classify() (common/redis_client.py) calls transient. The worker
stays alive for /health, reports not ready on /ready, and tries again; a refused password
is not waited out (AuthError, exit 3).

Back off the probe, not the recovery (issue 19 item 11): the retried action fails on its
first command while Redis still refuses, so trying it again is the probe, and a cheap one.
Probes come at a growing interval capped at PROBE_MAX_S, so the worker resumes within
about that long of Redis serving again, however long the outage was. The circuit breaker
only reports (its state metric and alert); the wait never sits out its reset time. The
warning is logged when the outage begins, when its reason changes, and every
LOG_EVERY_S while it lasts.
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
from email_ingestion.common.redis_client import (
    REDIS_FAILURES,
    RedisFault,
    classify,
    is_trust_failure,
    transient_reply_code,
    trust_message,
)
from email_ingestion.monitoring.health import Liveness

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that may pass by themselves: classify() (common/redis_client.py) decides, for the
# producer, the worker and the tools alike. NoScriptError (a Redis restarted inside
# redis-py's own retry of a pipeline forgot its scripts) is one of them: a new attempt
# builds a new pipeline, which loads them again. RedisUnavailableError is raised by our
# own boundary (e.g. fewer replicas than REDIS_WAIT_REPLICAS acknowledged); the settlement
# it follows is safe to replay.
WAIT_ERRORS: tuple[type[BaseException], ...] = (*REDIS_FAILURES, RedisUnavailableError)
MAX_DELAY_S = 30.0
PROBE_MIN_S = 0.05
PROBE_MAX_S = 0.5
LOG_EVERY_S = 30.0


def is_waitable(exc: BaseException) -> bool:
    """A failure the worker waits out rather than exits on."""
    return isinstance(exc, redis.exceptions.NoScriptError) or classify(exc) is RedisFault.TRANSIENT


def probe_delay_s(failures: int) -> float:
    """The wait before probe number `failures + 1`: doubling from PROBE_MIN_S to PROBE_MAX_S."""
    return min(PROBE_MAX_S, PROBE_MIN_S * 2.0 ** min(failures - 1, 10))


class Interrupted(Exception):  # noqa: N818 - control flow, not an error
    """Raised out of RedisWait.call when the worker must stop before Redis came back."""


class RedisWait:
    def __init__(self, stop_event: threading.Event, liveness: Liveness, breaker: CircuitBreaker) -> None:
        self.stop_event = stop_event
        self.liveness = liveness
        self.breaker = breaker
        self.failures = 0
        self.reason: str | None = None  # why Redis cannot serve us, while it cannot
        self._logged: tuple[str, float] | None = None  # (reason, monotonic) of the last warning

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
        """Note the failure, then wait for the next probe (never past a stop request)."""
        self.failures += 1
        self.breaker.failure()
        code = transient_reply_code(exc)
        label = f"{type(exc).__name__} ({code})" if code else type(exc).__name__
        self.reason = f"Redis unavailable during {where}: {label}: {exc}"
        delay_s = min(max_delay_s, probe_delay_s(self.failures))
        self._warn(delay_s)
        self._sleep(delay_s)

    def _warn(self, delay_s: float) -> None:
        assert self.reason is not None
        now = time.monotonic()
        if self._logged is not None and self._logged[0] == self.reason and now - self._logged[1] < LOG_EVERY_S:
            return
        self._logged = (self.reason, now)
        log.warning("Redis unavailable; retrying", extra={"error": self.reason, "retry_in_s": round(delay_s, 2),
                                                          "failures": self.failures})

    def succeeded(self) -> None:
        if self.failures:
            log.info("Redis is serving again", extra={"after_failures": self.failures})
        self.failures = 0
        self.reason = None
        self._logged = None
        self.breaker.success()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            self.liveness.tick()
            self.stop_event.wait(min(1.0, deadline - time.monotonic()))
