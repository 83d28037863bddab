"""The circuit breaker for calls to remote candidates, and their retry policy.

The waits between retries are :mod:`shadow.core.retry`'s, shared by every
outbound call; a candidate's ``retry`` section maps onto its policy here. The
breaker takes its clock from outside, so tests drive it with a fake clock
instead of sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from shadow.config.candidates import BreakerSpec, RetrySpec
from shadow.core.retry import RetryPolicy


def retry_policy(spec: RetrySpec) -> RetryPolicy:
    """The policy a candidate's ``retry`` section describes."""
    return RetryPolicy(max_attempts=spec.max_attempts, base_s=spec.backoff_s,
                       max_backoff_s=spec.max_backoff_s,
                       max_retry_after_s=spec.max_retry_after_s)


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

