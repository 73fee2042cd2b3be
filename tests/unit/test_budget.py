"""The per-message watchdog: an overrun is interrupted inside its guard, and never outside."""

from __future__ import annotations

import random
import threading
import time

from email_ingestion.common.errors import BudgetExceeded
from email_ingestion.producer.budget import Watchdog


def spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def test_overrun_is_interrupted_and_nothing_leaks_past_the_guard():
    """100 builds around the budget's edge: each overrun raises inside its guard, and no
    BudgetExceeded arrives after a guard has been left (that would kill the batch)."""
    watchdog = Watchdog(budget_s=0.02)
    rng = random.Random(9)
    cut_off = 0
    for _ in range(100):
        try:
            with watchdog.guard():
                spin(rng.choice([0.0, 0.001, 0.015, 0.03, 0.08]))
        except BudgetExceeded:
            cut_off += 1
        spin(0.002)  # a stray exception would surface here and fail the test
    assert cut_off > 0


def test_swallowed_overrun_is_raised_again_at_the_guard():
    """A build that catches BaseException still ends in BudgetExceeded when its guard exits."""
    watchdog = Watchdog(budget_s=0.02)
    raised = False
    try:
        with watchdog.guard():
            try:
                spin(0.2)
            except BaseException:  # noqa: BLE001 - what a careless parser might do
                pass
    except BudgetExceeded:
        raised = True
    assert raised


def test_guards_in_two_threads_are_independent():
    """A slow build in one thread does not interrupt a quick one in another."""
    watchdog = Watchdog(budget_s=0.05)
    outcome: dict[str, str] = {}

    def build(name: str, seconds: float) -> None:
        try:
            with watchdog.guard():
                spin(seconds)
            outcome[name] = "done"
        except BudgetExceeded:
            outcome[name] = "cut"

    threads = [threading.Thread(target=build, args=("slow", 0.5)),
               threading.Thread(target=build, args=("quick", 0.0))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcome == {"slow": "cut", "quick": "done"}


def test_an_interruption_swallowed_mid_build_is_repeated_until_the_build_stops():
    """Python drops an async exception that lands in a gc callback or a __del__; the build
    then runs on. The watchdog raises again each tick, so a 5 s build still stops near its
    budget instead of running for its whole length."""
    watchdog = Watchdog(budget_s=0.05)
    swallowed = 0
    started = time.monotonic()
    try:
        with watchdog.guard():
            deadline = started + 5
            while time.monotonic() < deadline:
                try:
                    spin(deadline - time.monotonic())
                except BudgetExceeded:
                    swallowed += 1
                    if swallowed > 1:
                        raise  # only the first one is lost, as in a gc callback
    except BudgetExceeded:
        pass
    assert swallowed == 2
    assert time.monotonic() - started < 1.0
