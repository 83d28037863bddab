"""One retry policy for every outbound call: full-jitter backoff and ``Retry-After``.

The candidates, the webhook poster, the LLM judge and the source guard all wait
the same way between attempts. Nothing here sleeps or reads the clock by
itself: callers pass ``now`` and ``uniform`` in, and sleep (blocking or
``asyncio``) as they must, so tests record waits instead of sleeping.

>>> policy = RetryPolicy(max_attempts=3, base_s=0.5, max_backoff_s=8.0, max_retry_after_s=60.0)
>>> backoff(policy, 3, lambda low, high: high)
2.0
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "backoff", "delay", "jitter", "retry_after"]

Uniform = Callable[[float, float], float]
"""Draws a number between its two bounds, like :meth:`random.Random.uniform`."""

_MAX_DOUBLINGS = 1023
"""``2.0 ** 1024`` overflows; by then any ``max_backoff_s`` has long been reached."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often a call is made, and how long to wait before making it again.

    The defaults are those of a remote candidate's ``retry`` section.

    Raises:
        ValueError: ``max_attempts`` is below 1, or a duration is negative.
    """

    max_attempts: int = 3
    """Attempts in all, the first one included."""
    base_s: float = 0.2
    """Upper bound of the first wait; it doubles per attempt up to ``max_backoff_s``."""
    max_backoff_s: float = 5.0
    max_retry_after_s: float = 60.0
    """A server's ``Retry-After`` is honoured up to this long."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("base_s", "max_backoff_s", "max_retry_after_s"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")


def backoff(policy: RetryPolicy, attempt: int, uniform: Uniform) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential with full jitter (AWS Architecture Blog, "Exponential Backoff
    and Jitter", 2015): uniformly between 0 and ``base_s * 2 ** (attempt - 1)``,
    at most ``max_backoff_s``, which spreads the retries of many callers
    instead of synchronising them.

    Raises:
        ValueError: ``attempt`` is below 1.
    """
    if attempt < 1:
        raise ValueError(f"attempts are counted from 1, got {attempt}")
    doubled = policy.base_s * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS)
    return uniform(0.0, min(policy.max_backoff_s, doubled))


def retry_after(value: str | None, now: Callable[[], datetime], cap: float) -> float | None:
    """The wait a ``Retry-After`` header asks for, at most ``cap`` seconds.

    Either delay-seconds or an HTTP date (RFC 9110 §10.2.3; all three date
    forms of §5.6.7, a date without a zone being GMT) counted from ``now()``.
    A negative delay or a date in the past asks for 0; a missing or unreadable
    value (or one that is not a finite number) for nothing, ``None``.
    """
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            date = parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if date.tzinfo is None:
            date = date.replace(tzinfo=UTC)
        seconds = (date - now()).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def delay(
    policy: RetryPolicy, attempt: int, retry_after_value: str | None, *,
    now: Callable[[], datetime], uniform: Uniform,
) -> float:
    """Seconds to wait after failed attempt ``attempt`` whose answer said ``Retry-After``.

    The larger of the jittered :func:`backoff` and what the server asked for
    (capped at ``max_retry_after_s``): a server's wait is honoured, and a
    ``Retry-After: 0`` from many callers does not bring them back in step.
    """
    drawn = backoff(policy, attempt, uniform)
    asked = retry_after(retry_after_value, now, policy.max_retry_after_s)
    return drawn if asked is None else max(drawn, asked)


def jitter() -> Uniform:
    """The default source of jitter: its own generator, so callers do not share one."""
    return random.Random().uniform
