"""An event as a row of the batch's columns, and the fast test that makes one.

The columnar replay (:mod:`shadow.pipeline.columnar`) maps records into :class:`Row`
values, and a recorder reads what candidate workers hand over
(:mod:`shadow.pipeline.handoff`) into them too: :func:`fast_row` vouches for a record
whose canonical fields are plain with a few type tests instead of a pydantic
validation, an :class:`~shadow.core.models.Event` is built from a row only where one is
needed (:func:`event_of`), and :func:`events_table` makes the rows of table ``events``
from the JSON the fast test wrote already.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
import pyarrow as pa

from shadow.core.models import Event
from shadow.store.writes import UTC_TIMESTAMP

# The timestamps the fast test reads itself: the extended ISO 8601 form both pydantic
# and ``datetime.fromisoformat`` read the same way. Anything else (epoch numbers, a
# space for the ``T``, a date alone) is left to pydantic.
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})?", re.ASCII
).fullmatch
_FIELDS = frozenset(("event_id", "key", "occurred_at", "segment", "payload", "routing_key"))


class Row(NamedTuple):
    """One mapped event in the batch's columns, with what its Event is built from."""

    event_id: str
    key: str
    occurred_at: datetime
    segment: dict[str, str]
    payload: dict[str, Any]
    routing_key: str | None
    segment_json: str
    payload_json: str
    present: set[str]
    """The Event's fields the record set (pydantic's ``model_fields_set``); the row's
    own set, handed to its Event."""


def fast_row(shaped: dict[str, Any]) -> Row | None:
    """The event of a shaped record if its fields are plain; None sends it to pydantic.

    None is no verdict on the record: only that the fast test does not vouch for it.
    A row returned is what validating the record into an :class:`Event` gives, and it is
    storable (its JSON writes, its time is within the years 1 to 9999 in UTC).
    """
    get = shaped.get
    event_id, key, at = get("event_id"), get("key"), get("occurred_at")
    if type(event_id) is not str or type(key) is not str or not event_id or not key:
        return None
    if type(at) is not str or not _ISO(at):
        return None
    try:
        occurred = datetime.fromisoformat(at)
    except ValueError:
        return None
    if not 1 < occurred.year < 9999:
        return None  # near the ends an offset may leave the years 1 to 9999 in UTC
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    segment = get("segment", _ABSENT)
    if segment is _ABSENT:
        segment = {}
    elif type(segment) is not dict:
        return None
    else:
        for item in segment.values():
            if type(item) is not str:
                return None
    payload = get("payload", _ABSENT)
    if payload is _ABSENT:
        payload = {}
    elif type(payload) is not dict:
        return None
    routing_key = get("routing_key")
    if routing_key is not None and (type(routing_key) is not str or not routing_key):
        return None
    try:
        segment_json = orjson.dumps(segment).decode()
        payload_json = orjson.dumps(payload).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None
    return Row(event_id, key, occurred, segment, payload, routing_key,
                segment_json, payload_json, shaped.keys() & _FIELDS)


_ABSENT: Any = object()


def row_of(event: Event) -> Row:
    """The row of an event pydantic validated (a record the fast test left to it)."""
    return Row(event.event_id, event.key, event.occurred_at, event.segment, event.payload,
                event.routing_key, orjson.dumps(event.segment).decode(),
                orjson.dumps(event.payload).decode(), set(event.model_fields_set))


_new = object.__new__
_set = object.__setattr__


def event_of(row: Row) -> Event:
    """The Event of a row without validating it again (the row is validated already).

    Sets what ``Event.model_construct`` sets, at a third of its cost; the Event equals
    the one ``Event.model_validate`` makes of the record.
    """
    event = _new(Event)
    _set(event, "__dict__", {
        "event_id": row.event_id, "key": row.key, "occurred_at": row.occurred_at,
        "segment": row.segment, "payload": row.payload, "routing_key": row.routing_key,
    })
    _set(event, "__pydantic_fields_set__", row.present)
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


def events_of(rows: list[Row], chosen: list[int]) -> list[Event]:
    """The Events of the chosen rows, the ones the candidates are called on."""
    return [event_of(rows[i]) for i in chosen]


def events_table(rows: list[Row], sources: list[str], positions: list[str]) -> pa.Table:
    """The rows of table ``events``, as :func:`shadow.store.writes.arrow_tables` makes them."""
    return pa.table({
        "event_id": pa.array([r.event_id for r in rows], pa.string()),
        "key": pa.array([r.key for r in rows], pa.string()),
        "routing_key": pa.array([r.routing_key or r.key for r in rows], pa.string()),
        "occurred_at": pa.array([r.occurred_at for r in rows], UTC_TIMESTAMP),
        "segment": pa.array([r.segment_json for r in rows], pa.string()),
        "payload": pa.array([r.payload_json for r in rows], pa.string()),
        "source": pa.array(sources, pa.string()),
        "position": pa.array(positions, pa.string()),
    })
