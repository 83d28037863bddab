"""Dotted paths into JSON-like values: ``ticket.via.channel``, ``tags.0``, ``$`` for the root."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""Returned by :func:`get_path` when the path does not exist (distinct from a JSON null)."""


@lru_cache(maxsize=1024)
def split_path(path: str) -> tuple[str, ...]:
    if path in ("", "$"):
        return ()
    return tuple(path.removeprefix("$.").split("."))


def get_path(value: Any, path: str) -> Any:
    """The value at ``path`` inside ``value``, or :data:`MISSING`.

    Object keys are matched exactly; a part made of digits indexes a list.

    >>> get_path({"a": {"b": [10, 20]}}, "a.b.1")
    20
    >>> get_path({"a": 1}, "a.c") is MISSING
    True
    """
    for part in split_path(path):
        if isinstance(value, dict):
            if part not in value:
                return MISSING
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            index = int(part)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


def sql_json_path(dotted: str | None) -> str:
    """A DuckDB JSONPath for a dotted path, safe inside a single-quoted SQL literal.

    Each part is quoted, so keys with spaces or punctuation need nothing
    special; quotes in a key are escaped for the JSONPath, then for SQL.

    >>> sql_json_path("requester.email")
    '$."requester"."email"'
    >>> print(sql_json_path(None), sql_json_path("it's"))
    $ $."it''s"
    """
    if not dotted:
        return "$"
    escaped = (part.replace('"', '\\"').replace("'", "''") for part in dotted.split("."))
    return "$" + "".join(f'."{part}"' for part in escaped)
