"""The reports' typed values as JSON, and back: one serialisation for every report dataclass.

A report is a tree of frozen dataclasses whose field names, in order, are the keys of its
JSON; :func:`as_json` turns one into plain values (tuples become lists, datetimes ISO-8601
text) and :func:`from_json` reads them back, so a report that crossed the control API as
JSON is rendered from the same types as one made here.

Example: for ``Pair(name: str, values: tuple[int, ...])``, ``as_json(Pair("a", (1, 2)))``
is ``{"name": "a", "values": [1, 2]}``, and ``from_json(Pair, that)`` is the pair again.
"""

from __future__ import annotations

import dataclasses
import types
from datetime import datetime
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


def as_json(value: Any) -> Any:
    """Plain JSON-ready values of ``value``: dataclasses as dicts in field order; a value
    with an ``as_json()`` method of its own (``OwnerOptions``) is asked for it. A field
    whose metadata says ``omit_empty`` is left out when it is empty (a section that only
    some reports have)."""
    own = getattr(value, "as_json", None)
    if callable(own):
        return own()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get("omit_empty") and not getattr(value, f.name))}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """The dataclass ``cls`` from what :func:`as_json` made of one.

    Keys that ``cls`` does not have are ignored (a report from a later version may add
    some).

    Raises:
        TypeError: a field ``cls`` needs is missing.
    """
    hints = get_type_hints(cls)
    given = {f.name: _convert(hints[f.name], data[f.name])
             for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if f.name in data}
    return cls(**given)


def _convert(hint: Any, value: Any) -> Any:
    if value is None or hint is Any:
        return value
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        (inner, *more) = [arg for arg in get_args(hint) if arg is not type(None)]
        return value if more else _convert(inner, value)
    if origin is tuple:
        (item, *_) = get_args(hint)
        return tuple(_convert(item, v) for v in value)
    if origin is list:
        (item,) = get_args(hint)
        return [_convert(item, v) for v in value]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    if hint is datetime:
        return datetime.fromisoformat(value)
    return value
