"""Where live decisions go for production to act on: the sink contract, files and webhooks.

A :class:`Decision` is made only by :meth:`Decision.of`, which refuses shadow,
failed and abstained predictions: that check is the one door through which a
prediction becomes something production acts on. Every sink publishes the
same :meth:`Decision.body`, so a consumer reads a Kafka topic, a webhook or a
file alike. The Kafka sink is :class:`connectors.kafka.KafkaSink`.

A decision whose output proposes actions (:mod:`shadow.core.actions`) is an
action request: its message also carries ``actions`` (tool and arguments of
each, in order) and an ``idempotency_key`` made from rollout, event, candidate
and version, the same however often it is published. Tool calls an agent ran
in shadow (the output's ``tool_calls``) never leave: they are cut from every
published output.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Self

import orjson

from connectors.http_post import JsonPoster
from shadow.core.actions import actions_of
from shadow.core.disk import fsync
from shadow.core.errors import SinkError
from shadow.core.models import Event, Mode, Prediction, utc_now

__all__ = ["Decision", "FileSink", "Sink", "SinkError", "SinkState", "WebhookSink"]

_PLAIN_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
_SHADOW_ONLY = "tool_calls"
"""The key of an agent's output holding the calls it ran in shadow and their results
(``shadow.store.tool_calls.TOOL_CALLS_KEY``): never published."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A live prediction, published for production to act on.

    Make one with :meth:`of`. Every message a sink sends carries ``event_id``,
    by which consumers dedupe: delivery is at least once.
    """

    event_id: str
    key: str
    """The case (ticket, thread) the decision is about; Kafka messages are keyed by it."""
    candidate: str
    version: str | None
    output: Any
    rollout: str
    step: int
    """The index of the rollout step the event was routed at."""
    percent: float
    """The share of traffic that step sends live."""
    review: bool
    """A person is also asked to confirm or correct this decision."""
    predicted_at: datetime

    @classmethod
    def of(
        cls, prediction: Prediction, event: Event, *, rollout: str, step: int,
        percent: float, review: bool | None = None,
    ) -> Decision:
        """The decision a live prediction makes for ``event``.

        ``review`` defaults to the prediction's own ``review`` flag.

        Raises:
            ValueError: the prediction is a shadow one, failed, abstained, belongs
                to another event, or ``step``/``percent`` are not those of a live step.
        """
        name = prediction.event_id
        if prediction.mode is not Mode.LIVE:
            raise ValueError(f"{prediction.mode.value} prediction for {name} must never be "
                             f"published: only live ones reach a sink")
        if prediction.error is not None:
            raise ValueError(f"prediction for {name} failed ({prediction.error.type}): "
                             f"there is no decision to publish")
        if prediction.abstained:
            raise ValueError(f"prediction for {name} abstained: there is no decision to publish")
        if name != event.event_id:
            raise ValueError(f"prediction for {name} does not belong to event {event.event_id}")
        if step < 0 or not 0 < percent <= 100:
            raise ValueError(f"a live decision needs step >= 0 and 0 < percent <= 100, "
                             f"got step {step} at {percent} %")
        return cls(event_id=name, key=event.key, candidate=prediction.candidate,
                   version=prediction.version, output=prediction.output, rollout=rollout,
                   step=step, percent=percent,
                   review=prediction.review if review is None else review,
                   predicted_at=prediction.predicted_at)

    @property
    def actions(self) -> list[dict[str, Any]]:
        """The actions the output proposes, ``{"tool", "arguments"}`` each, in order; empty
        for a decision that proposes none. Malformed elements are left out (a prediction
        with one has a violation, and is never published)."""
        return [{"tool": action.tool, "arguments": action.arguments}
                for action in actions_of(self.output).actions]

    @property
    def idempotency_key(self) -> str:
        """The action request's key for consumers to dedupe by: a digest of rollout, event,
        candidate and version, so publishing the decision again repeats it."""
        named = orjson.dumps([self.rollout, self.event_id, self.candidate, self.version])
        return "act_" + hashlib.sha256(named).hexdigest()[:32]

    def headers(self) -> list[tuple[str, bytes]]:
        """Message headers (Kafka) naming where the decision comes from, and for an
        action request its ``idempotency_key``."""
        headers = [
            ("candidate", self.candidate.encode()),
            ("version", (self.version or "").encode()),
            ("rollout", self.rollout.encode()),
            ("rollout_step", str(self.step).encode()),
            ("percent", f"{self.percent:g}".encode()),
            ("event_id", self.event_id.encode()),
            ("review", b"true" if self.review else b"false"),
        ]
        if self.actions:
            headers.append(("idempotency_key", self.idempotency_key.encode()))
        return headers

    def body(self) -> bytes:
        """The decision as a JSON object, the same for every sink; times in UTC.

        An action request adds ``actions`` and ``idempotency_key`` after the other keys;
        an output's ``tool_calls`` (results of calls run in shadow) is never included.
        """
        at = self.predicted_at
        if at.tzinfo is not None:
            at = at.astimezone(UTC)  # a store may hand times back in its session's zone
        output = self.output
        if isinstance(output, dict) and _SHADOW_ONLY in output:
            output = {name: value for name, value in output.items() if name != _SHADOW_ONLY}
        message = {
            "event_id": self.event_id, "key": self.key, "candidate": self.candidate,
            "version": self.version, "output": output, "rollout": self.rollout,
            "step": self.step, "percent": self.percent, "review": self.review,
            "predicted_at": at.isoformat(),
        }
        actions = self.actions
        if actions:
            message["actions"] = actions
            message["idempotency_key"] = self.idempotency_key
        return orjson.dumps(message)

    @property
    def message_id(self) -> str:
        """A webhook message id made from ``event_id``: the same for every retry."""
        if _PLAIN_ID.fullmatch(self.event_id):
            return f"msg_{self.event_id}"
        # Header values must be plain ASCII; other ids are stood in for by a digest.
        return "msg_" + hashlib.sha256(self.event_id.encode()).hexdigest()[:32]


class SinkState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Sink(ABC):
    """A destination for live decisions.

    Lifecycle: ``open()`` once, ``publish()`` any number of times, then
    ``close()``; use it as a context manager. A closed sink cannot be
    reopened. Constructors only validate and store their options: every
    connection is made in ``open()``. A sink is used from one thread.

    Delivery is at least once: ``publish`` returns only when the destination
    has durably accepted every decision, and otherwise raises
    :class:`~shadow.core.errors.SinkError`, after which some of the decisions may
    have been accepted all the same. Publishing them again may repeat those;
    consumers dedupe by ``event_id``, which every message carries.
    """

    name: str
    _state: SinkState = SinkState.NEW

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def state(self) -> SinkState:
        return self._state

    def open(self) -> None:
        """Connect to the destination. Called once, before any publish.

        Raises:
            SinkError: the destination cannot be reached; the sink stays new and
                ``open()`` may be tried again.
            RuntimeError: the sink was opened before.
        """
        if self._state is not SinkState.NEW:
            raise RuntimeError(f"cannot open sink {self.name!r}: it is {self._state.value}")
        self._open()
        self._state = SinkState.OPEN

    def publish(self, decisions: Sequence[Decision]) -> None:
        """Hand ``decisions`` to the destination; returns once it has accepted every one.

        Accepted means durably: acknowledged by every in-sync Kafka replica,
        answered 2xx by the webhook, written and fsynced to the file. An empty
        sequence publishes nothing.

        Raises:
            SinkError: not every decision was accepted (some may have been).
            TypeError: something other than a :class:`Decision` was given.
            RuntimeError: the sink is not open.
        """
        if self._state is not SinkState.OPEN:
            raise RuntimeError(f"cannot publish to sink {self.name!r}: it is "
                               f"{self._state.value}")
        for decision in decisions:
            if not isinstance(decision, Decision):
                raise TypeError(f"a sink publishes Decision values (Decision.of), "
                                f"got {type(decision).__name__}")
        if decisions:
            self._publish(decisions)

    def close(self) -> None:
        """Flush and release the destination. Idempotent; nothing is published after it.

        Raises:
            SinkError: flushing failed; the sink is closed all the same.
        """
        if self._state is SinkState.OPEN:
            self._state = SinkState.CLOSED
            self._close()
        self._state = SinkState.CLOSED

    @abstractmethod
    def _open(self) -> None:
        """Connect. Raise SinkError if the destination cannot be had."""

    @abstractmethod
    def _publish(self, decisions: Sequence[Decision]) -> None:
        """Publish a non-empty batch; called only while open. Return only once all are
        accepted; raise SinkError otherwise (never a client library's exception)."""

    @abstractmethod
    def _close(self) -> None:
        """Flush and release; called once, after the last publish."""


class FileSink(Sink):
    """Appends each decision as one JSON line (:meth:`Decision.body`) to a file.

    The file and its parent directories are created on open; each publish
    writes its whole batch and fsyncs before returning. A line cut short by a
    crash is ended on the next open, so later lines stay readable.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self._file: IO[bytes] | None = None

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._file = self.path.open("ab")
            if created:
                fsync(self.path.parent)
            elif self._file.tell() > 0 and not _ends_with_newline(self.path):
                self._file.write(b"\n")
        except OSError as exc:
            raise SinkError(f"cannot open {self.path} to append decisions: {exc}") from exc

    def _publish(self, decisions: Sequence[Decision]) -> None:
        file = self._file
        assert file is not None
        try:
            file.write(b"".join(d.body() + b"\n" for d in decisions))
            file.flush()
            os.fsync(file.fileno())
        except OSError as exc:
            raise SinkError(f"cannot write decisions to {self.path}: {exc}") from exc

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.flush()
            os.fsync(file.fileno())
        except OSError as exc:
            raise SinkError(f"cannot flush decisions to {self.path}: {exc}") from exc
        finally:
            file.close()


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) == b"\n"


class WebhookSink(Sink):
    """POSTs each decision to a URL as its own JSON request (:meth:`Decision.body`).

    One request per decision rather than a batch: that is what webhook
    receivers (automation platforms, ticketing systems) expect, and a receiver
    refusing one decision then refuses only that one. Decisions of a batch go
    one after another on a kept-alive connection, in order; the first that is
    not accepted stops the batch with :class:`~shadow.core.errors.SinkError`.

    Each request carries the Standard Webhooks headers ``webhook-id``
    (``msg_`` and the event id, the same on every retry), ``webhook-timestamp``
    and, when ``secret`` is given, ``webhook-signature``. Connection errors,
    timeouts, 429 and 5xx are retried up to ``max_attempts`` in all, with
    jittered exponential backoff from ``backoff_s``; other 4xx fail at once.
    See :class:`~connectors.http_post.JsonPoster`.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._poster = JsonPoster(url, headers=headers, secret=secret, timeout_s=timeout_s,
                                  max_attempts=max_attempts, backoff_s=backoff_s, now=now,
                                  sleep=sleep)
        self.url = self._poster.display_url
        self.name = f"webhook:{self.url}"

    def _open(self) -> None:
        pass  # the connection is made by the first request, and again after any failure

    def _publish(self, decisions: Sequence[Decision]) -> None:
        for done, decision in enumerate(decisions):
            try:
                self._poster.post(decision.body(), message_id=decision.message_id)
            except SinkError as exc:
                raise SinkError(f"{exc} ({done} of {len(decisions)} decisions of the batch "
                                f"were accepted before it)") from exc

    def _close(self) -> None:
        self._poster.close()
