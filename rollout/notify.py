"""Announcing rollout transitions (rollbacks, promotions, pauses) to people and systems.

An announcement reports what has already happened: the rollback took effect
before anyone is told. So a :class:`Notifier` never raises; a channel that is
away is logged as a warning and reported by ``announce`` returning ``False``,
and the controller carries on.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

import orjson
import structlog

from connectors.http_post import JsonPoster
from shadow.core.errors import ShadowError
from shadow.core.models import utc_now

log = structlog.get_logger(__name__)

__all__ = [
    "Announcement", "KafkaNotifier", "Notifier", "Notifiers", "RecordingNotifier",
    "WebhookNotifier",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Announcement:
    """One transition of a rollout, as told to people and systems."""

    rollout: str
    action: str
    """What happened: ``rollback``, ``promote``, ``pause``... (``rollout.state.Action``)."""
    actor: str
    """Who did it: ``controller`` for automatic transitions, else a person's name."""
    reason: str
    from_step: int
    to_step: int
    percent: float
    """The share of traffic that is live after the transition."""
    status: str
    """The rollout's status after the transition (``rollout.state.Status``)."""
    at: datetime
    evidence: dict[str, Any] = field(default_factory=dict)
    """The measurements the transition was made on (gate results, detector state)."""

    def as_json(self) -> bytes:
        """The announcement as a JSON object; evidence values JSON cannot hold become text."""
        return orjson.dumps({
            "rollout": self.rollout, "action": self.action, "actor": self.actor,
            "reason": self.reason, "from_step": self.from_step, "to_step": self.to_step,
            "percent": self.percent, "status": self.status, "at": self.at.isoformat(),
            "evidence": self.evidence,
        }, default=str, option=orjson.OPT_NON_STR_KEYS)

    @property
    def message_id(self) -> str:
        """The same for the same transition, so receivers can drop a repeated announcement."""
        made = f"{self.rollout}\0{self.action}\0{self.from_step}\0{self.to_step}\0{self.at}"
        return "msg_" + hashlib.sha256(made.encode()).hexdigest()[:32]


class Notifier(ABC):
    """A channel announcements go to.

    ``announce`` never raises (an ``Exception``, that is): a failed
    announcement is logged and returns ``False``. Constructors make no
    connection; a channel connects on its first announcement and again after
    a failure. ``close`` releases the connection; it is idempotent, and the
    notifier may still announce after it (reconnecting). Use it as a context
    manager. Not thread-safe.
    """

    name: str

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def announce(self, announcement: Announcement) -> bool:
        """Deliver ``announcement``; ``True`` once the channel accepted it, else ``False``."""
        try:
            self._announce(announcement)
        except Exception as exc:  # noqa: BLE001 - a failed announcement never raises
            log.warning("rollout announcement not delivered", channel=self.name,
                        rollout=announcement.rollout, action=announcement.action,
                        to_step=announcement.to_step, error=str(exc) or repr(exc))
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release the channel's connection, if it keeps one."""

    @abstractmethod
    def _announce(self, announcement: Announcement) -> None:
        """Deliver, returning only once the channel accepted it; raise anything otherwise."""


class WebhookNotifier(Notifier):
    """POSTs each announcement as JSON (:meth:`Announcement.as_json`).

    Signed with the Standard Webhooks scheme when ``secret`` is given, retried
    like :class:`~connectors.sinks.WebhookSink` (the same
    :class:`~connectors.http_post.JsonPoster`), but with fewer attempts and a
    shorter timeout by default: the controller waits for the announcement.
    ``webhook-id`` is :attr:`Announcement.message_id`.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
        timeout_s: float = 5.0,
        *,
        max_attempts: int = 2,
        backoff_s: float = 0.2,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._poster = JsonPoster(url, headers=headers, secret=secret, timeout_s=timeout_s,
                                  max_attempts=max_attempts, backoff_s=backoff_s, now=now,
                                  sleep=sleep)
        self.name = f"webhook:{self._poster.display_url}"

    def _announce(self, announcement: Announcement) -> None:
        self._poster.post(announcement.as_json(), message_id=announcement.message_id)

    def close(self) -> None:
        self._poster.close()


class KafkaNotifier(Notifier):
    """Publishes each announcement to a topic, keyed by the rollout's name.

    acks=all: ``announce`` returns ``True`` once every in-sync replica holds
    it, waiting at most ``timeout_s`` (also for a broker that cannot be
    reached). Keying by rollout keeps a rollout's announcements in order.
    """

    def __init__(
        self, bootstrap: str, topic: str, *, timeout_s: float = 10.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.name = f"kafka:{topic}"
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self._options = dict(options or {})
        self._producer: Any = None

    def _announce(self, announcement: Announcement) -> None:
        # Imported here: kafka-python takes a quarter of a second to import, and
        # most deployments announce by webhook. Its errors never leave: announce()
        # catches them like any other failure.
        from connectors.kafka import acks_all_producer

        if self._producer is None:
            self._producer = acks_all_producer(self.bootstrap, timeout_s=self.timeout_s,
                                               options=self._options, limit_requests=True)
        headers = [("action", announcement.action.encode()),
                   ("message_id", announcement.message_id.encode())]
        try:
            self._producer.send(self.topic, key=announcement.rollout.encode(),
                                value=announcement.as_json(),
                                headers=headers).get(timeout=self.timeout_s)
        except Exception:
            self.close()  # start afresh next time rather than keep a producer in trouble
            raise

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001 - closing a notifier never raises either
                log.warning("kafka notifier did not close cleanly", channel=self.name,
                            error=str(exc))


class RecordingNotifier(Notifier):
    """Keeps announcements in ``announced``; ``fail_next(n)`` makes the next ``n`` fail."""

    def __init__(self, *, name: str = "recording") -> None:
        self.name = name
        self.announced: list[Announcement] = []
        self._failing = 0

    def fail_next(self, n: int = 1) -> None:
        if n < 0:
            raise ValueError("cannot fail a negative number of announcements")
        self._failing = n

    def _announce(self, announcement: Announcement) -> None:
        if self._failing:
            self._failing -= 1
            raise ShadowError(f"notifier {self.name!r} was told to fail")
        self.announced.append(announcement)


class Notifiers:
    """Announces to every channel, one after another, whatever the others did.

    Raises:
        ValueError: two channels have the same name (they would announce twice).
    """

    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        names = [n.name for n in notifiers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"notification channels named more than once: {repeated}")
        self.notifiers = list(notifiers)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def announce(self, announcement: Announcement) -> dict[str, bool]:
        """Whether each channel, by name, accepted the announcement. Never raises."""
        return {n.name: n.announce(announcement) for n in self.notifiers}

    def close(self) -> None:
        for notifier in self.notifiers:
            try:
                notifier.close()
            except Exception as exc:  # noqa: BLE001 - one channel's trouble is not the others'
                log.warning("notifier did not close cleanly", channel=notifier.name,
                            error=str(exc))
