"""Circuit breaker transitions, with the clock passed in."""

from __future__ import annotations

from src.monitoring.breaker import CircuitBreaker, State


def test_opens_after_threshold_then_half_opens_then_closes():
    now = [0.0]
    breaker = CircuitBreaker("imap", failure_threshold=3, reset_timeout_s=30, clock=lambda: now[0])
    for _ in range(2):
        breaker.failure()
    assert breaker.state is State.CLOSED and breaker.wait_s() == 0
    breaker.failure()
    assert breaker.state is State.OPEN and breaker.wait_s() == 30
    now[0] = 10
    assert breaker.wait_s() == 20
    now[0] = 30
    assert breaker.state is State.HALF_OPEN and breaker.wait_s() == 0
    breaker.success()
    assert breaker.state is State.CLOSED and breaker.failures == 0


def test_a_failed_trial_reopens_at_once():
    now = [0.0]
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout_s=5, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    now[0] = 5
    assert breaker.state is State.HALF_OPEN
    breaker.failure()
    assert breaker.state is State.OPEN and breaker.wait_s() == 5
