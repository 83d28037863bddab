"""Retry waits and a circuit breaker for calls to remote candidates.

Both take their clock and randomness from outside, so tests drive them with a
fake clock instead of sleeping.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime

from shadow.config.candidates import BreakerSpec, RetrySpec


def backoff(spec: RetrySpec, attempt: int, uniform: Callable[[float, float], float]) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential with full jitter (AWS Architecture Blog, "Exponential Backoff
    and Jitter", 2015): uniformly between 0 and the doubled cap, which spreads
    the retries of many callers instead of synchronising them.
    """
    cap = min(spec.max_backoff_s, spec.backoff_s * 2 ** (attempt - 1))
    return uniform(0.0, cap)


def retry_after(value: str | None, spec: RetrySpec, now: Callable[[], datetime]) -> float | None:
    """The wait a ``Retry-After`` header asks for (seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now()).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), spec.max_retry_after_s)


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calling an endpoint that keeps failing.

    After ``failures`` consecutive failed calls the circuit opens: calls are
    refused at once for ``cooldown_s``. Then one call is let through as a
    probe; its success closes the circuit, its failure opens it again.
    """

    def __init__(self, spec: BreakerSpec, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._spec = spec
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        self.state = BreakerState.CLOSED

    def allow(self) -> bool:
        """Whether a call may go out now; a probe is allowed once per cooldown."""
        if self.state is BreakerState.CLOSED:
            return True
        cooled = self._clock() - self._opened_at >= self._spec.cooldown_s
        if self.state is BreakerState.OPEN and cooled:
            self.state = BreakerState.HALF_OPEN
            self._probing = False
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self._failures = 0
        self.state = BreakerState.CLOSED

    def failed(self) -> None:
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._spec.failures:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()


def jitter() -> Callable[[float, float], float]:
    """The default source of jitter: its own generator, so callers do not share one."""
    return random.Random().uniform

