"""The contracts every source and sink keeps.

A source hands out :class:`RawRecord` values; turning them into Events and
Outcomes (or dead letters) is the mapping's job, so every source gets the same
mapping, validation and dead-letter behaviour for free.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import orjson


class RawRecord(NamedTuple):
    """One record as a source read it.

    ``value`` is the decoded object, or ``None`` when decoding failed, in which
    case ``error`` says why. ``raw`` is the original text (or the row,
    for tabular files), kept for dead letters; ``None`` for a record that has
    no content at all (a Kafka tombstone).
    ``position`` identifies the record inside its source (``line 12``,
    ``row 7``, ``p0@1234``) so a dead letter can be traced back.

    A named tuple rather than a frozen dataclass: one is made per record read,
    and it builds in a third of the time.
    """

    source: str
    position: str
    value: dict[str, Any] | None
    raw: bytes | str | dict[Any, Any] | None
    error: str | None = None

    def raw_text(self, limit: int = 65_536) -> str:
        raw = self.raw
        if raw is None:
            return ""
        if isinstance(raw, dict):
            try:
                raw = orjson.dumps(raw, default=str, option=orjson.OPT_NON_STR_KEYS)
            except (TypeError, orjson.JSONEncodeError):  # nested too deep, a huge integer
                raw = repr(raw)
        text = raw.decode("utf-8", "replace").rstrip("\r\n") if isinstance(raw, bytes) else raw
        return text if len(text) <= limit else text[:limit] + "…[truncated]"


class SourceState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Source(ABC):
    """A stream of raw records, read in batches.

    Lifecycle: ``open()`` once, then ``poll()`` until it returns an empty list
    with ``exhausted`` true (bounded sources) or forever (unbounded ones), then
    ``close()``. Use it as a context manager. A closed source cannot be reopened.
    """

    name: str
    _state: SourceState = SourceState.NEW

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Acquire the underlying resource. Called once, before any poll."""
        if self._state is not SourceState.NEW:
            raise RuntimeError(f"cannot open source {self.name!r}: it is {self._state.value}")
        self._open()
        self._state = SourceState.OPEN

    def close(self) -> None:
        """Release the resource. Idempotent; ``poll`` is never called after it."""
        if self._state is SourceState.OPEN:
            self._close()
        self._state = SourceState.CLOSED

    def poll(self, max_records: int) -> list[RawRecord]:
        """Up to ``max_records`` records; never blocks longer than the source's own timeout.

        An empty list from a bounded source means it is exhausted.
        """
        if self._state is not SourceState.OPEN:
            raise RuntimeError(f"cannot poll source {self.name!r}: it is {self._state.value}")
        return self._poll(max_records)

    def commit(self, position: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called only after the store has committed every record up to ``position``.

        Sources that can resume (Kafka) record their progress here; files re-read
        from the start and rely on the store's idempotency.
        """

    @property
    def exhausted(self) -> bool:
        """True once a bounded source has handed out its last record."""
        return False

    def away(self) -> str | None:
        """Why the system behind the source cannot be used now (a broker that is
        down, say), while polls go on returning nothing; ``None`` when all is well."""
        return None

    def fraction_done(self) -> float | None:
        """How much of a bounded source has been read, 0 to 1; ``None`` when unknown."""
        return None

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _poll(self, max_records: int) -> list[RawRecord]: ...

    @abstractmethod
    def _close(self) -> None: ...
