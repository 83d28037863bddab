"""Fakes for tests and notebooks: a source over an in-memory list, a sink that records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from connectors.base import RawRecord, Source
from connectors.sinks import Decision, Sink
from shadow.core.errors import SinkError


class ListSource(Source):
    """Hands out the given objects as records, ``position`` being their index."""

    def __init__(self, values: list[dict[str, Any]], *, name: str = "list") -> None:
        self.name = name
        self._values = list(values)
        self._next = 0
        self.committed: list[str] = []

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._values)

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def _poll(self, max_records: int) -> list[RawRecord]:
        chunk = self._values[self._next : self._next + max_records]
        start, self._next = self._next, self._next + len(chunk)
        return [
            RawRecord(self.name, f"item {start + i}", value, orjson.dumps(value, default=str))
            for i, value in enumerate(chunk)
        ]

    def commit(self, position: str) -> None:
        self.committed.append(position)


class RecordingSink(Sink):
    """Keeps what is published in ``published``, in order; can be told to fail.

    ``fail_next(n)`` makes the next ``n`` publishes raise
    :class:`~shadow.core.errors.SinkError` without accepting anything, for tests of
    what callers do when a sink is away (retry, keep an outbox).
    """

    def __init__(self, *, name: str = "recording") -> None:
        self.name = name
        self.published: list[Decision] = []
        self.batches = 0
        """Publishes that succeeded."""
        self.failures = 0
        """Publishes that were made to fail."""
        self._failing = 0

    def fail_next(self, n: int = 1) -> None:
        if n < 0:
            raise ValueError("cannot fail a negative number of publishes")
        self._failing = n

    def _open(self) -> None:
        pass

    def _publish(self, decisions: Sequence[Decision]) -> None:
        if self._failing:
            self._failing -= 1
            self.failures += 1
            raise SinkError(f"sink {self.name!r} was told to fail "
                            f"({self._failing} more failures to come)")
        self.published.extend(decisions)
        self.batches += 1

    def _close(self) -> None:
        pass
