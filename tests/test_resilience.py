"""Retry waits and the circuit breaker, driven by a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from shadow.candidates.resilience import BreakerState, CircuitBreaker, backoff, retry_after
from shadow.config.candidates import BreakerSpec, RetrySpec
from tests.clock import ManualClock

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def highest(low: float, high: float) -> float:
    return high


@pytest.mark.parametrize(("attempt", "cap"), [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)])
def test_backoff_doubles_per_attempt_up_to_its_maximum(attempt: int, cap: float) -> None:
    spec = RetrySpec(backoff_s=0.2, max_backoff_s=1.0)

    assert backoff(spec, attempt, highest) == pytest.approx(cap)


def test_backoff_draws_between_zero_and_the_cap() -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return 0.25

    assert backoff(RetrySpec(backoff_s=0.5), 2, uniform) == 0.25
    assert drawn == [(0.0, 1.0)]


def test_retry_after_in_seconds_is_capped() -> None:
    spec = RetrySpec(max_retry_after_s=10)

    assert retry_after("3", spec, lambda: NOW) == 3.0
    assert retry_after("120", spec, lambda: NOW) == 10.0


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    header = format_datetime(NOW + timedelta(seconds=7), usegmt=True)

    assert retry_after(header, RetrySpec(), lambda: NOW) == pytest.approx(7.0)


@pytest.mark.parametrize("header", [None, "", "soon", "Thu, 99 Foo 2024"])
def test_an_unreadable_retry_after_asks_for_nothing(header: str | None) -> None:
    assert retry_after(header, RetrySpec(), lambda: NOW) is None


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(BreakerSpec(failures=3, cooldown_s=5), clock=ManualClock())

    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # resets the count
    breaker.failed()
    breaker.failed()
    assert breaker.allow()
    breaker.failed()

    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_it() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerSpec(failures=1, cooldown_s=5), clock=clock)
    breaker.failed()

    clock.t += 4.9
    assert not breaker.allow()
    clock.t += 0.1
    assert breaker.allow()
    assert not breaker.allow()  # only one probe at a time
    breaker.succeeded()

    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_a_failed_probe_opens_the_circuit_for_another_cooldown() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerSpec(failures=2, cooldown_s=5), clock=clock)
    breaker.failed()
    breaker.failed()
    clock.t += 5
    assert breaker.allow()

    breaker.failed()

    assert breaker.state is BreakerState.OPEN
    clock.t += 4
    assert not breaker.allow()
    clock.t += 1
    assert breaker.allow()
