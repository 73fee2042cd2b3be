"""Circuit breaker transitions, with the clock passed in."""

from __future__ import annotations

from email_ingestion.common.breaker import CircuitBreaker, State


def test_opens_after_threshold_then_half_opens_then_closes():
    """Opens at the failure threshold, half-opens after the reset timeout, closes on a success."""
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
    """A failure during the half-open trial reopens the breaker at once for a full reset timeout."""
    now = [0.0]
    breaker = CircuitBreaker("redis", failure_threshold=2, reset_timeout_s=5, clock=lambda: now[0])
    breaker.failure()
    breaker.failure()
    now[0] = 5
    assert breaker.state is State.HALF_OPEN
    breaker.failure()
    assert breaker.state is State.OPEN and breaker.wait_s() == 5


def test_health_is_503_when_the_loop_stalls_and_status_survives_errors():
    """/health is 503 while the loop is stalled, 200 after a tick; a failing /status still answers 200."""
    import json

    from prometheus_client import CollectorRegistry

    from email_ingestion.monitoring.health import HealthServer, Liveness

    now = [0.0]
    liveness = Liveness(stall_s=60, clock=lambda: now[0])

    def broken_status() -> dict:
        raise ConnectionError("redis down")

    server = HealthServer(CollectorRegistry(), liveness, lambda: (True, "ok"), broken_status)
    assert server.route("/health")[0] == 200
    now[0] = 61
    code, body, _ = server.route("/health")
    assert code == 503 and json.loads(body)["status"] == "stalled"
    liveness.tick()
    assert server.route("/health")[0] == 200
    code, body, _ = server.route("/status")
    assert code == 200 and "redis down" in json.loads(body)["error"]


def test_hot_histogram_matches_prometheus_histogram():
    """Same exposition as prometheus_client's Histogram for the same observations."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from email_ingestion.monitoring.metrics import HotHistogram

    buckets = (0.001, 0.01, 0.1, 1.0)
    values = [0.0005, 0.001, 0.002, 0.05, 0.5, 0.5, 2.0, 100.0]
    fast, slow = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("h_seconds", "doc", {"stream": "s"}, buckets, fast)
    reference = Histogram("h_seconds", "doc", ["stream"], buckets=buckets, registry=slow).labels("s")
    for value in values:
        hot.observe(value)
        reference.observe(value)
    lines = lambda registry: sorted(line for line in generate_latest(registry).decode().splitlines()  # noqa: E731
                                    if line.startswith("h_seconds") and "_created" not in line)
    assert lines(fast) == lines(slow)
