"""The one retry policy: full-jitter backoff, Retry-After, and the wait made of both.

Randomness and the clock are injected: ``uniform`` returns one of its bounds,
``now`` is a fixed instant; the expectations are worked out by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from shadow.core.retry import RetryPolicy, backoff, delay, jitter, retry_after

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)  # a Wednesday
POLICY = RetryPolicy(max_attempts=5, base_s=0.2, max_backoff_s=1.0, max_retry_after_s=10.0)


def now() -> datetime:
    return NOW


def highest(low: float, high: float) -> float:
    return high


def lowest(low: float, high: float) -> float:
    return low


def http_date(seconds_from_now: float) -> str:
    return format_datetime(NOW + timedelta(seconds=seconds_from_now), usegmt=True)


# -- backoff ---------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "bound"), [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)])
def test_backoff_draws_up_to_a_bound_that_doubles_per_attempt_to_the_cap(
    attempt: int, bound: float,
) -> None:
    assert backoff(POLICY, attempt, highest) == pytest.approx(bound)


def test_backoff_draws_from_zero_to_the_bound() -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return 0.25

    assert backoff(POLICY, 2, uniform) == 0.25
    assert drawn == [(0.0, 0.4)]  # doubling 0.2 is exact in binary floating point
    assert backoff(POLICY, 2, lowest) == 0.0


def test_backoff_after_thousands_of_attempts_is_the_cap_not_an_overflow() -> None:
    assert backoff(POLICY, 5000, highest) == 1.0


def test_attempts_are_counted_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff(POLICY, 0, highest)


@pytest.mark.parametrize("options", [
    {"max_attempts": 0}, {"base_s": -0.1}, {"max_backoff_s": -1.0},
    {"max_retry_after_s": float("nan")},
])
def test_a_policy_refuses_impossible_values(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**options)


def test_the_default_source_of_jitter_draws_between_its_bounds() -> None:
    uniform = jitter()
    assert all(0.0 <= uniform(0.0, 2.0) <= 2.0 for _ in range(100))


# -- Retry-After -------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), (" 7 ", 7.0), ("0", 0.0),
                                                 ("2.5", 2.5)])
def test_retry_after_in_seconds(header: str, seconds: float) -> None:
    assert retry_after(header, now, 60.0) == seconds


def test_retry_after_in_seconds_is_capped() -> None:
    assert retry_after("120", now, 10.0) == 10.0


def test_a_negative_retry_after_asks_for_no_wait() -> None:
    assert retry_after("-5", now, 10.0) == 0.0


def test_retry_after_as_an_http_date_counts_from_now() -> None:
    assert retry_after(http_date(7), now, 60.0) == 7.0


@pytest.mark.parametrize("header", [
    "Wednesday, 01-May-24 12:00:07 GMT",  # RFC 850, obsolete but to be accepted
    "Wed May  1 12:00:07 2024",  # asctime, which carries no zone: GMT
])
def test_retry_after_in_the_obsolete_date_forms(header: str) -> None:
    assert retry_after(header, now, 60.0) == 7.0


def test_retry_after_as_a_date_in_the_past_asks_for_no_wait() -> None:
    assert retry_after(http_date(-30), now, 60.0) == 0.0


def test_retry_after_as_an_http_date_is_capped() -> None:
    assert retry_after(http_date(3600), now, 60.0) == 60.0


@pytest.mark.parametrize("header", [None, "", "  ", "soon", "Thu, 99 Foo 2024", "nan", "inf",
                                    "Sun, 06 Nov 99999 08:49:37 GMT"])
def test_an_unreadable_retry_after_asks_for_nothing(header: str | None) -> None:
    assert retry_after(header, now, 60.0) is None


# -- the wait ----------------------------------------------------------------------


def test_without_retry_after_the_wait_is_the_backoff() -> None:
    assert delay(POLICY, 3, None, now=now, uniform=highest) == pytest.approx(0.8)
    assert delay(POLICY, 3, "soon", now=now, uniform=highest) == pytest.approx(0.8)


def test_a_longer_retry_after_is_waited_for() -> None:
    assert delay(POLICY, 3, "3", now=now, uniform=highest) == 3.0
    assert delay(POLICY, 3, http_date(4), now=now, uniform=highest) == 4.0


def test_a_shorter_retry_after_still_waits_the_backoff() -> None:
    assert delay(POLICY, 3, "0", now=now, uniform=highest) == pytest.approx(0.8)
    assert delay(POLICY, 3, "0", now=now, uniform=lowest) == 0.0


def test_the_wait_for_a_retry_after_is_capped() -> None:
    assert delay(POLICY, 1, "120", now=now, uniform=highest) == 10.0
    assert delay(POLICY, 1, http_date(3600), now=now, uniform=highest) == 10.0
