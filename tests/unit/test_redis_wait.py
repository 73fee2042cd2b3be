"""RedisWait's probing (issue 19 item 11): back off the probe, not the recovery."""

from __future__ import annotations

import threading

import redis

from email_ingestion.common.breaker import CircuitBreaker
from email_ingestion.monitoring.health import Liveness
from email_ingestion.worker.redis_wait import PROBE_MAX_S, RedisWait, probe_delay_s


def test_probe_interval_grows_to_a_small_cap_however_long_the_outage():
    """The wait between probes doubles from 50 ms and never exceeds PROBE_MAX_S."""
    delays = [probe_delay_s(n) for n in range(1, 200)]
    assert delays[0] == 0.05 and delays == sorted(delays) and max(delays) == PROBE_MAX_S <= 0.5


def test_an_open_breaker_does_not_lengthen_the_wait():
    """A breaker open with a 10-minute reset only reports: the next probe is still due within
    PROBE_MAX_S, and the reason names the reply code."""
    waits: list[float] = []
    breaker = CircuitBreaker("redis", failure_threshold=1, reset_timeout_s=600)
    wait = RedisWait(threading.Event(), Liveness(60), breaker)
    wait._sleep = waits.append  # type: ignore[method-assign]
    for _ in range(20):
        wait.failed(redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but ..."), "settling")
    assert breaker.snapshot()["state"] == "open"
    assert max(waits) <= PROBE_MAX_S
    assert wait.reason is not None and "(MISCONF)" in wait.reason
