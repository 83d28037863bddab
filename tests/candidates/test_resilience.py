"""The circuit breaker, driven by a fake clock, and a candidate's retry policy.

The waits themselves are tested in tests/core/test_retry.py.
"""

from __future__ import annotations

from shadow.candidates.resilience import BreakerState, CircuitBreaker, retry_policy
from shadow.config.candidates import BreakerSpec, RetrySpec
from shadow.core.retry import RetryPolicy
from tests.clock import ManualClock


def test_a_candidates_retry_section_maps_onto_the_retry_policy() -> None:
    spec = RetrySpec(max_attempts=4, backoff_s=0.3, max_backoff_s=2.0, max_retry_after_s=9.0)

    assert retry_policy(spec) == RetryPolicy(max_attempts=4, base_s=0.3, max_backoff_s=2.0,
                                             max_retry_after_s=9.0)


def test_the_default_retry_section_keeps_its_defaults() -> None:
    assert retry_policy(RetrySpec()) == RetryPolicy(max_attempts=3, base_s=0.2,
                                                    max_backoff_s=5.0, max_retry_after_s=60.0)


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
