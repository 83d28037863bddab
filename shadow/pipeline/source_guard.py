"""Sources that fail on their own: one that is away is retried in the background.

The daemon wraps every source it polls (webhook endpoints excepted: they only
ever hand out what was already received) in a :class:`GuardedSource`. A source
that cannot be opened, or whose poll or commit raises, is *away*: it is
skipped, opened or polled again after a backoff that doubles from one second up
to ``max_backoff_s``, and reported by :meth:`GuardedSource.status` for
``/ready``, ``/metrics`` and the logs, while the other sources, the jobs and the
API go on. A source may also say itself that its system is away while its polls
simply return nothing (:meth:`connectors.base.Source.away`, a Kafka broker that
is down): it is reported the same way, and polled as usual.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import structlog

from connectors.base import RawRecord, Source, SourceState
from connectors.kafka_batch import KafkaBatch
from shadow.core.errors import first_line
from shadow.core.models import utc_now
from shadow.core.retry import RetryPolicy, backoff

log = structlog.get_logger(__name__)

_Polled = TypeVar("_Polled")


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Whether a source is usable, and since when it is not."""

    name: str
    up: bool
    reason: str | None = None
    since: datetime | None = None
    failures: int = 0
    retry_in_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": "up" if self.up else "away", "reason": self.reason,
                "since": self.since.isoformat() if self.since else None,
                "failures": self.failures,
                "retry_in_s": round(self.retry_in_s, 3) if self.retry_in_s is not None else None}


class GuardedSource(Source):
    """``inner``, with its failures caught, retried after a backoff, and reported.

    Every exception ``inner`` raises from ``open``, ``poll`` or ``commit``
    makes it away until the next attempt; a commit that failed leaves the
    records stored (the source reads them again if it must). ``uniform`` and
    ``clock`` are for tests.
    """

    def __init__(self, inner: Source, *, max_backoff_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = utc_now,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.inner, self.name = inner, inner.name
        self._retry = RetryPolicy(base_s=1.0, max_backoff_s=max_backoff_s)
        self._clock, self._now, self._uniform = clock, now, uniform
        self._failures = 0
        self._retry_at: float | None = None
        self._reason: str | None = None
        self._since: datetime | None = None

    # -- Source ---------------------------------------------------------------

    def _open(self) -> None:
        self._attempt_open()

    def _poll(self, max_records: int) -> list[RawRecord]:
        return self._guarded(lambda: self.inner.poll(max_records)) or []

    @property
    def poll_batch(self) -> Callable[[int], KafkaBatch] | None:
        """The inner source's ``poll_batch`` (:meth:`connectors.kafka.KafkaSource.poll_batch`),
        guarded as :meth:`poll` is; ``None`` when the inner source reads no batches."""
        if getattr(self.inner, "poll_batch", None) is None:
            return None
        return self._poll_batch

    def _poll_batch(self, max_records: int) -> KafkaBatch:
        if self._state is not SourceState.OPEN:
            raise RuntimeError(f"cannot poll source {self.name!r}: it is {self._state.value}")
        inner: Any = self.inner  # a source with ``poll_batch``, as the property found
        polled = self._guarded(lambda: inner.poll_batch(max_records))
        return polled if polled is not None else KafkaBatch(self.name, [])

    def _guarded(self, poll: Callable[[], _Polled]) -> _Polled | None:
        """What ``poll`` returns, or ``None`` while the source waits for its next attempt
        or when the inner source could not be opened or polled."""
        if self._retry_at is not None and self._clock() < self._retry_at:
            return None
        if self.inner._state is SourceState.NEW and not self._attempt_open():
            return None
        try:
            polled = poll()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the other sources go on
            self._failed("poll", exc)
            return None
        self._check(self.inner.away())
        return polled

    def commit(self, position: str) -> None:
        try:
            self.inner.commit(position)
        except Exception as exc:  # noqa: BLE001 - the records are stored whatever happens
            self._failed("commit", exc)

    def _close(self) -> None:
        try:
            self.inner.close()
        except Exception as exc:  # noqa: BLE001 - closing must not stop the others closing
            log.warning("source did not close cleanly", source=self.name, error=first_line(exc))

    @property
    def exhausted(self) -> bool:
        return self.inner.exhausted

    def fraction_done(self) -> float | None:
        return self.inner.fraction_done()

    def away(self) -> str | None:
        return self._reason

    def lag(self) -> dict[str, int]:
        lag = getattr(self.inner, "lag", None)
        return dict(lag()) if callable(lag) and self._reason is None else {}

    # -- health -----------------------------------------------------------------

    def status(self) -> SourceStatus:
        retry_in = (max(0.0, self._retry_at - self._clock())
                    if self._retry_at is not None else None)
        return SourceStatus(self.name, self._reason is None, self._reason, self._since,
                            self._failures, retry_in)

    def _attempt_open(self) -> bool:
        try:
            self.inner.open()
        except Exception as exc:  # noqa: BLE001 - retried after the backoff
            self._failed("open", exc)
            return False
        self._check(None)
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        self._failures += 1
        wait = backoff(self._retry, self._failures, self._uniform)
        self._retry_at = self._clock() + wait
        reason = f"{what} failed: {first_line(exc)}"
        if self._reason is None:
            self._since = self._now()
            log.warning("source away; the others go on", source=self.name, reason=reason,
                        retry_in_s=round(wait, 2))
        elif self._failures & (self._failures - 1) == 0:  # 1, 2, 4, 8, …: a log that thins out
            log.warning("source still away", source=self.name, reason=reason,
                        failures=self._failures, retry_in_s=round(wait, 2))
        self._reason = reason

    def _check(self, away: str | None) -> None:
        """Take a successful call's word, and the source's own, for whether it is up."""
        self._retry_at = None
        if away is None:
            if self._reason is not None:
                log.info("source back", source=self.name, was=self._reason,
                         away_since=self._since.isoformat() if self._since else None)
            self._reason, self._since, self._failures = None, None, 0
            return
        if self._reason is None:
            self._since = self._now()
            log.warning("source away; the others go on", source=self.name, reason=away)
        self._reason = away
