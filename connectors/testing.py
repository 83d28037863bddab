"""Fakes for tests and notebooks: a source over an in-memory list of records."""

from __future__ import annotations

from typing import Any

import orjson

from connectors.base import RawRecord, Source


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
