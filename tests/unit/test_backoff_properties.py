"""Properties of the backoff schedule."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from email_ingestion.worker.backoff import Backoff

backoffs = st.builds(Backoff, base_s=st.floats(0.01, 100), factor=st.floats(1, 10),
                     cap_s=st.floats(0.01, 3600), max_retries=st.integers(0, 20))


@given(backoffs, st.integers(1, 5000), st.integers(0, 2**32))
def test_delay_is_within_zero_and_the_capped_ceiling(backoff, retry, seed):
    """A jittered delay always lies between 0 and the retry's ceiling, and the ceiling never exceeds cap_s."""
    delay = backoff.delay_s(retry, random.Random(seed))
    assert 0 <= delay <= backoff.ceiling_s(retry) <= backoff.cap_s


@given(backoffs, st.integers(1, 200))
def test_ceiling_never_decreases(backoff, retry):
    """The backoff ceiling is non-decreasing from one retry to the next."""
    assert backoff.ceiling_s(retry) <= backoff.ceiling_s(retry + 1)


@given(st.integers(0, 20), st.integers(1, 40))
def test_gives_up_exactly_after_max_retries(max_retries, attempts):
    """Backoff gives up exactly when the attempt count exceeds max_retries, never before."""
    assert Backoff(max_retries=max_retries).gives_up_after(attempts) == (attempts > max_retries)


def test_defaults_are_10s_doubling_capped_at_10_minutes():
    """The default schedule starts at 10 s, doubles each retry and is capped at 600 s."""
    backoff = Backoff()
    assert [backoff.ceiling_s(n) for n in (1, 2, 3, 4, 8)] == [10, 20, 40, 80, 600]
