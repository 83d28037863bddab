"""The rollout's state on a compacted Kafka topic: published by one process, followed by others.

:class:`StatePublisher` writes the state after every transition to a topic
keyed by the rollout's name (created compacted when missing, acks=all,
idempotent), and publishes the current state again every ``heartbeat`` while
nothing changes: same revision, a new ``published_at``. :class:`StateFollower`
reads the topic from the beginning and then follows it: the highest revision of
each rollout wins, and a message of an older revision (a redelivery, a stale
publisher) never takes a follower back.

A follower tells a quiet rollout from a lost connection by the heartbeats:
:meth:`StateFollower.age` is the time, on the follower's own monotonic clock,
since it last heard the current state, and :meth:`StateFollower.live_allowed`
is ``False`` while that is longer than ``max_age`` (the follower must act as in
shadow then) and ``True`` again once a message arrives. What a follower reads
while catching up at start tells it the latest state but not that its publisher
is still there: only messages arriving after that count as heard.

Publishing never stops the controller: :meth:`StatePublisher.publish` hands
the state to the publisher's thread and returns; a broker that is away is
logged and tried again at every heartbeat until it takes the latest state.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self

import orjson
import structlog

from connectors.compacted import CompactedReader, KeyedRecord, KeyedWriter
from rollout.state import RolloutState, Status
from shadow.config.state_topic import StateTopicSpec
from shadow.core.errors import ShadowError
from shadow.core.models import utc_now

log = structlog.get_logger(__name__)

__all__ = ["Kind", "PublishedState", "StateFollower", "StatePublisher"]


class Kind(enum.StrEnum):
    CHANGE = "change"
    """The state after a transition (or as the publisher found it at start)."""
    HEARTBEAT = "heartbeat"
    """The current state again: nothing changed, the publisher is still there."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedState:
    """One message of the state topic: a rollout's state and when it was published."""

    state: RolloutState
    published_at: datetime
    kind: Kind = Kind.CHANGE

    def as_json(self) -> bytes:
        s = self.state
        return orjson.dumps({
            "rollout": s.rollout, "candidate": s.candidate, "version": s.version,
            "step": s.step, "percent": s.percent, "status": s.status.value,
            "fallen_tiers": list(s.fallen), "revision": s.revision,
            "step_started_at": s.step_started_at.isoformat(),
            "updated_at": s.updated_at.isoformat(),
            "published_at": self.published_at.isoformat(), "kind": self.kind.value,
        })

    @classmethod
    def from_json(cls, data: bytes) -> PublishedState:
        """Read a message back.

        Raises:
            ValueError: not a message of the state topic (says what is wrong).
        """
        try:
            v = orjson.loads(data)
            state = RolloutState(
                rollout=str(v["rollout"]), candidate=str(v["candidate"]),
                version=None if v["version"] is None else str(v["version"]),
                step=int(v["step"]), percent=float(v["percent"]), status=Status(v["status"]),
                step_started_at=_aware(v["step_started_at"]),
                updated_at=_aware(v["updated_at"]), revision=int(v["revision"]),
                fallen=tuple(str(t) for t in v["fallen_tiers"]))
            return cls(state=state, published_at=_aware(v["published_at"]),
                       kind=Kind(v["kind"]))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed rollout state: {exc}") from exc


def _aware(text: Any) -> datetime:
    at = datetime.fromisoformat(str(text))
    if at.tzinfo is None:
        raise ValueError(f"time without a time zone: {text!r}")
    return at


class _Life(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class _OwnThread:
    """Works in a thread of its own: started once (``start``, or entering it as a context
    manager), closed once (``close``, idempotent); subclasses name it and do the work."""

    what: str
    """What it is, as errors and the thread's name say it (``state publisher``)."""
    topic: str

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._life = _Life.NEW

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        if self._life is _Life.RUNNING:
            raise ShadowError(f"the {self.what} is running already")
        if self._life is _Life.CLOSED:
            raise ShadowError(f"cannot start the {self.what} again once it has been closed")
        self._life = _Life.RUNNING
        self._thread = threading.Thread(
            target=self._run, name=f"{self.what.replace(' ', '-')}:{self.topic}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        raise NotImplementedError

    def _closing(self) -> bool | None:
        """Mark it closed: ``None`` when it was already, else whether it was running."""
        if self._life is _Life.CLOSED:
            return None
        running, self._life = self._life is _Life.RUNNING, _Life.CLOSED
        return running

    def _run(self) -> None:
        raise NotImplementedError


class StatePublisher(_OwnThread):
    """Publishes each rollout's state on a compacted topic, and a heartbeat of it.

    ``start`` (or entering it as a context manager) starts its thread;
    ``close`` publishes what is pending (waiting at most ``timeout_s``) and
    stops it. :meth:`publish` never blocks and never raises. Each write waits
    at most ``timeout_s`` for the broker's acks.
    """

    def __init__(self, *, bootstrap: str, topic: str, heartbeat_s: float = 1.0,
                 timeout_s: float = 5.0, now: Callable[[], datetime] = utc_now,
                 options: dict[str, Any] | None = None) -> None:
        if heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be positive")
        super().__init__()
        self.topic, self.heartbeat_s, self.timeout_s = topic, heartbeat_s, timeout_s
        self.now = now
        self._writer = KeyedWriter(bootstrap=bootstrap, topic=topic, timeout_s=timeout_s,
                                   options=options)
        self._lock = threading.Lock()
        self._latest: dict[str, RolloutState] = {}
        self._pending: list[RolloutState] = []
        """Changes not yet acknowledged, oldest first: every one is published, in order."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._failing: str | None = None
        self.changes = 0
        """Changes the broker acknowledged."""
        self.heartbeats = 0
        """Heartbeats the broker acknowledged."""

    @classmethod
    def from_spec(cls, spec: StateTopicSpec, *, now: Callable[[], datetime] = utc_now) -> Self:
        return cls(bootstrap=spec.bootstrap, topic=spec.topic,
                   heartbeat_s=spec.heartbeat.total_seconds(), now=now)

    what = "state publisher"

    def publish(self, state: RolloutState) -> None:
        """Publish ``state`` as its rollout's current one, soon, from the publisher's thread.

        Every state given is published, in the order given, except one of an
        older revision than a state already given and the very state given last
        (the heartbeat repeats that). Never raises, never waits for the broker.
        """
        with self._lock:
            known = self._latest.get(state.rollout)
            if known is not None and (state.revision < known.revision or state == known):
                return
            self._latest[state.rollout] = state
            self._pending.append(state)
        self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every change given so far is acknowledged; ``False`` if not within
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Publish what is pending (for at most ``timeout_s``), stop, and disconnect.
        Idempotent."""
        running = self._closing()
        if running is None:
            return
        if running:
            if not self.flush(self.timeout_s):
                with self._lock:
                    left = len(self._pending)
                log.warning("rollout state changes not published before closing",
                            topic=self.topic, pending=left)
            self._stop.set()
            self._wake.set()
            assert self._thread is not None
            self._thread.join(self.timeout_s + 1.0)
        self._writer.close()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        while not self._stop.is_set():
            self._wake.wait(max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            changed = self._send_changes()
            if time.monotonic() >= next_beat:
                if changed:
                    self._send_heartbeats()
                next_beat = time.monotonic() + self.heartbeat_s

    def _send_changes(self) -> bool:
        """Send the pending changes; ``True`` when the broker took them all."""
        while True:
            with self._lock:
                if not self._pending:
                    return True
                state = self._pending[0]
            if not self._write(state, Kind.CHANGE):
                return False
            with self._idle:
                self._pending.pop(0)  # only this thread takes from the head
                self._idle.notify_all()
            self.changes += 1

    def _send_heartbeats(self) -> None:
        with self._lock:
            waiting = {s.rollout for s in self._pending}
            current = [s for r, s in self._latest.items() if r not in waiting]
        for state in current:
            if not self._write(state, Kind.HEARTBEAT):
                return
            self.heartbeats += 1

    def _write(self, state: RolloutState, kind: Kind) -> bool:
        message = PublishedState(state=state, published_at=self.now(), kind=kind)
        try:
            self._writer.write(state.rollout, message.as_json(), headers={"kind": kind.value})
        except Exception as exc:  # noqa: BLE001 - SinkError, or a client's bug: retried alike
            if self._failing is None:
                log.warning("rollout state not published; trying again at every heartbeat",
                            topic=self.topic, rollout=state.rollout, revision=state.revision,
                            error=str(exc))
            self._failing = str(exc)
            return False
        if self._failing is not None:
            log.info("rollout state published again", topic=self.topic, rollout=state.rollout,
                     revision=state.revision)
            self._failing = None
        return True


@dataclass(slots=True)
class _Followed:
    state: RolloutState
    heard_at: float | None
    """Monotonic time the current state was last heard; ``None`` when only read at start."""


class StateFollower(_OwnThread):
    """The latest state of each rollout on a state topic, followed in a thread.

    ``start`` (or entering it as a context manager) reads the topic from the
    beginning and follows it; ``close`` stops. A broker that is away, or a
    topic that does not exist yet, is tried again every ``retry_s``; meanwhile
    :meth:`current` keeps the last state known and :meth:`age` grows.
    ``on_state`` is called, in the follower's thread, with every message that
    brings a newer revision (read at start or followed); it must not block.
    """

    def __init__(self, *, bootstrap: str, topic: str, max_age_s: float = 2.0,
                 retry_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 on_state: Callable[[PublishedState], None] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        if retry_s <= 0:
            raise ValueError("retry_s must be positive")
        super().__init__()
        self.topic, self.max_age_s, self.retry_s = topic, max_age_s, retry_s
        self._clock, self._on_state = clock, on_state
        self._reader = CompactedReader(bootstrap=bootstrap, topic=topic, options=options)
        self._lock = threading.Lock()
        self._followed: dict[str, _Followed] = {}
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self.malformed = 0
        """Messages on the topic that are not rollout states (logged and skipped)."""

    @classmethod
    def from_spec(cls, spec: StateTopicSpec, **options: Any) -> Self:
        return cls(bootstrap=spec.bootstrap, topic=spec.topic,
                   max_age_s=spec.max_age.total_seconds(), **options)

    what = "state follower"

    def close(self) -> None:
        """Stop following and disconnect. Idempotent."""
        running = self._closing()
        if running is None:
            return
        self._stop.set()
        if running:
            assert self._thread is not None
            self._thread.join(self._reader.poll_timeout_s + self.retry_s + 10.0)

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Whether the topic was read as far as it reached at start, within ``timeout_s``."""
        return self._caught_up.wait(timeout_s)

    def current(self, rollout: str) -> RolloutState | None:
        """The newest state of ``rollout`` read so far; ``None`` when none was."""
        with self._lock:
            followed = self._followed.get(rollout)
        return followed.state if followed is not None else None

    def age(self, rollout: str) -> float | None:
        """Seconds since the current state of ``rollout`` was last heard (a change or a
        heartbeat); ``None`` when it has not been heard since this follower started."""
        with self._lock:
            followed = self._followed.get(rollout)
            heard = followed.heard_at if followed is not None else None
        return None if heard is None else self._clock() - heard

    def live_allowed(self, rollout: str, max_age: float | None = None) -> bool:
        """Whether live decisions of ``rollout`` may be published: its current state was
        heard within ``max_age`` seconds (the follower's ``max_age_s`` by default)."""
        age = self.age(rollout)
        limit = self.max_age_s if max_age is None else max_age
        return age is not None and age <= limit

    def rollouts(self) -> list[str]:
        with self._lock:
            return sorted(self._followed)

    def _run(self) -> None:
        opened, warned = False, False
        while not self._stop.is_set():
            try:
                if not opened:
                    self._reader.open()
                    opened = True
                    if warned:
                        log.info("state topic readable again", topic=self.topic)
                    warned = False
                for record in self._reader.poll():
                    self._take(record)
                if not self._caught_up.is_set() and self._reader.caught_up:
                    self._caught_up.set()
            except Exception as exc:  # noqa: BLE001 - SourceError, or a client's bug: retried alike
                if not warned:
                    log.warning("state topic not readable; trying again", topic=self.topic,
                                error=str(exc), retry_s=self.retry_s)
                warned = True
                if opened:
                    self._reader.close()
                    opened = False
                self._stop.wait(self.retry_s)
        self._reader.close()

    def _take(self, record: KeyedRecord) -> None:
        if record.value is None:
            return  # a tombstone: the rollout was deleted; its last state is kept
        try:
            message = PublishedState.from_json(record.value)
        except ValueError as exc:
            self.malformed += 1
            log.warning("not a rollout state; skipped", topic=self.topic,
                        position=record.position, error=str(exc))
            return
        state = message.state
        heard = None if record.history else self._clock()
        with self._lock:
            followed = self._followed.get(state.rollout)
            if followed is not None and state.revision < followed.state.revision:
                return  # older than what is known: neither taken nor heard
            newer = followed is None or state.revision > followed.state.revision
            if followed is None or newer:
                self._followed[state.rollout] = _Followed(state, heard)
            elif heard is not None:
                followed.heard_at = heard
        if newer and self._on_state is not None:
            try:
                self._on_state(message)
            except Exception as exc:  # noqa: BLE001 - a listener's trouble is not the follower's
                log.warning("state listener failed", topic=self.topic, error=str(exc))
