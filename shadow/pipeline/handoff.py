"""What a candidate worker hands the recorder: each batch it read, as JSON messages.

A worker (:mod:`shadow.pipeline.worker`) publishes, for each record of its event
sources, an item: either the event with every candidate's prediction of it, or the dead
letter the record became. A batch's items go out together, as few messages as
:data:`MAX_MESSAGE_BYTES` allows (one message per event cost the recorder a third of its
time in kafka-python's reading alone). The recorder reads a batch of them back with
:func:`receive` (each message through :func:`decode`) and stores them as a single
process would have (:meth:`shadow.pipeline.runner.Pipeline.feeds`, ``recorded``): each
event under the source and position it was read from, so that a record handed over
twice (a worker killed before its offsets were committed, a rebalance) is recognised as
the same record, and its predictions stored once.

A prediction carries its routing (mode, step, review) as the worker decided it,
and ``published`` says when the worker published it to the action sink itself.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

import orjson
from pydantic import TypeAdapter, ValidationError

from connectors.base import RawRecord
from shadow.core.models import (
    DeadLetter,
    ErrorKind,
    Event,
    Mode,
    Prediction,
    PredictionError,
    RecordKind,
)
from shadow.pipeline.rows import Row, event_of, fast_row, row_of

FORMAT = 2
"""Bumped when a message changes so that an older recorder cannot read it."""

MAX_MESSAGE_BYTES = 512 * 1024
"""A message holds items up to about this size (a broker takes 1 MiB by default); an
item larger than that alone is a message of its own."""


class Published(NamedTuple):
    """A live decision published to the action sink: whose, and when."""

    event_id: str
    candidate: str
    version: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class Handed:
    """An event and its predictions, as a worker read and predicted it.

    The event is a :class:`~shadow.pipeline.rows.Row`: the recorder writes it as one,
    and builds no :class:`Event` unless asked (:attr:`event`).
    """

    row: Row
    source: str
    position: str
    predictions: list[Prediction]
    published: Published | None
    """The live decision among them the worker published to the action sink itself."""
    worker: str

    @property
    def event(self) -> Event:
        return event_of(self.row)


@dataclass(frozen=True, slots=True)
class HandedDeadLetter:
    dead_letter: DeadLetter
    worker: str


def worker_name() -> str:
    """How a worker names itself in what it hands over: its host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@cache
def _predictions() -> TypeAdapter[list[Prediction]]:
    return TypeAdapter(list[Prediction])


def event_item(event: Event, source: str, position: str, predictions: list[Prediction],
               *, published: Published | None) -> bytes:
    """One event with its predictions, and the live decision among them the worker
    published itself, if it did."""
    return orjson.dumps({
        "kind": "event", "source": source, "position": position,
        "event": event.model_dump(mode="json"),
        "predictions": orjson.Fragment(_predictions().dump_json(predictions)),
        "published": None if published is None else {
            "candidate": published.candidate, "version": published.version,
            "at": published.at.isoformat()},
    })


def dead_letter_item(dead_letter: DeadLetter) -> bytes:
    return orjson.dumps({"kind": "dead_letter",
                         "dead_letter": dead_letter.model_dump(mode="json")})


def messages(items: list[bytes], *, worker: str) -> list[bytes]:
    """The items as messages of about :data:`MAX_MESSAGE_BYTES` at most, in order."""
    head = b'{"format":%d,"kind":"batch","worker":%s,"items":[' % (FORMAT, orjson.dumps(worker))
    found: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for item in items:
        if chunk and size + len(item) > MAX_MESSAGE_BYTES:
            found.append(head + b",".join(chunk) + b"]}")
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        found.append(head + b",".join(chunk) + b"]}")
    return found


def decode(data: dict[str, Any]) -> list[Handed | HandedDeadLetter | ValueError]:
    """The items of a message read back (as the Kafka source decoded its JSON), in order;
    an item that cannot be read is the error saying why, in its place.

    Raises:
        ValueError: not a message a worker of this format hands over (says what is wrong).
    """
    if data.get("format") != FORMAT:
        raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
    try:
        worker = str(data["worker"])
        if data["kind"] != "batch":
            raise ValueError(f"unknown kind {data['kind']!r}")
        items = data["items"]
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from exc
    if not isinstance(items, list):
        raise ValueError(f"items: expected a list, got {type(items).__name__}")
    found: list[Handed | HandedDeadLetter | ValueError] = []
    for item in items:
        try:
            found.append(_item(item, worker))
        except ValueError as exc:
            found.append(exc)
    return found


@dataclass(slots=True)
class Received:
    """What a batch of records from the workers' topic holds."""

    handed: list[Handed]
    """Each event handed over, in order; a record handed over twice within the batch (a
    worker that lost its partitions before committing, and the one that took them) once."""
    dead_letters: list[DeadLetter]
    """The dead letters workers handed over, and one for each message or item that is not
    what a worker hands over, at its position (and index), in order."""
    workers: set[str]
    repeats: int
    """Records left out of ``handed`` as handed over already within the batch."""


def receive(records: list[RawRecord], received_at: datetime) -> Received:
    """The items of the records a recorder read from the workers' topic."""
    got = Received([], [], set(), 0)
    places: set[tuple[str, str, str]] = set()
    for record in records:
        try:
            if record.value is None:
                raise ValueError(record.error or "no value")
            items = decode(record.value)
        except ValueError as exc:
            got.dead_letters.append(_not_handed_over(record, record.position, exc, received_at))
            continue
        for index, item in enumerate(items):
            if isinstance(item, ValueError):
                got.dead_letters.append(_not_handed_over(
                    record, f"{record.position} item {index}", item, received_at))
                continue
            got.workers.add(item.worker)
            if isinstance(item, HandedDeadLetter):
                got.dead_letters.append(item.dead_letter)
                continue
            place = (item.row.event_id, item.source, item.position)
            if place in places:
                got.repeats += 1
                continue
            places.add(place)
            got.handed.append(item)
    return got


def _not_handed_over(record: RawRecord, position: str, error: ValueError,
                     received_at: datetime) -> DeadLetter:
    return DeadLetter(kind=RecordKind.EVENT, source=record.source, position=position,
                      reason=f"not a record a worker handed over: {error}",
                      raw=record.raw_text(), received_at=received_at)


HANDED_PER_MESSAGE = 2_000.0
"""Events a worker's message is taken to hold until the first is read: about as many as
the smallest items fill one with (400 events with an answer of a few hundred words do),
so a recorder's first read is no larger than a batch, and the next ones grow to one."""


def published_by_workers(handed: list[Handed], predictions: list[Prediction]
                         ) -> dict[tuple[str, str, str | None], datetime]:
    """When the workers published those of ``predictions`` they published themselves, as
    the first handing over of each event says."""
    if all(h.published is None for h in handed):
        return {}
    sent: dict[tuple[str, str, str | None], datetime] = {}
    firsts: set[str] = set()
    for h in handed:
        if h.row.event_id in firsts:
            continue
        firsts.add(h.row.event_id)
        if h.published is not None:
            sent[(h.published.event_id, h.published.candidate, h.published.version)] = \
                h.published.at
    return {k: sent[k] for p in predictions if (k := (p.event_id, p.candidate, p.version)) in sent}


def _item(data: Any, worker: str) -> Handed | HandedDeadLetter:
    try:
        if data["kind"] == "dead_letter":
            return HandedDeadLetter(DeadLetter.model_validate(data["dead_letter"]), worker)
        if data["kind"] != "event":
            raise ValueError(f"unknown kind {data['kind']!r}")
        fields = data["event"]
        row = fast_row(fields) if type(fields) is dict else None
        if row is None:  # what the fast test does not vouch for, pydantic decides
            row = row_of(Event.model_validate(fields))
        predictions = [_prediction(p) for p in data["predictions"]]
        sent, published = data.get("published"), None
        if sent is not None:
            version = sent["version"]
            published = Published(row.event_id, str(sent["candidate"]),
                                  None if version is None else str(version),
                                  datetime.fromisoformat(sent["at"]))
        return Handed(row, str(data["source"]), str(data["position"]), predictions,
                      published, worker)
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from exc
    except ValidationError as exc:
        raise ValueError(f"malformed: {exc.errors(include_url=False)[0]['msg']}") from exc
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"malformed: {exc}") from exc


def _prediction(fields: dict[str, Any]) -> Prediction:
    """A prediction as :func:`event_item` wrote it, read back field by field: a worker's
    batches are large, and this takes a tenth of the time a generic validator does.

    Raises:
        KeyError, TypeError, ValueError: not a prediction this format writes.
    """
    error = fields["error"]
    return _built((
        str(fields["event_id"]), str(fields["candidate"]), _text(fields["version"]),
        _member(_MODES, fields["mode"], "mode"), fields["output"], _number(fields["confidence"]),
        bool(fields["abstained"]), float(fields["latency_ms"]),
        None if error is None else PredictionError(
            str(error["type"]), str(error["message"]), _member(_KINDS, error["kind"], "error.kind"),
            _text(error["body"])),
        _aware(fields["predicted_at"]), _whole(fields["status"]), int(fields["attempts"]),
        _number(fields["ttfb_ms"]), _whole(fields["prompt_tokens"]),
        _whole(fields["completion_tokens"]), _number(fields["cost"]), _text(fields["model"]),
        bool(fields["review"]), _whole(fields["step"]),
        tuple(map(str, fields["violations"])) if fields["violations"] else (),
        fields["request"]))


_ORDER = ("event_id", "candidate", "version", "mode", "output", "confidence", "abstained",
          "latency_ms", "error", "predicted_at", "status", "attempts", "ttfb_ms",
          "prompt_tokens", "completion_tokens", "cost", "model", "review", "step", "violations",
          "request")
if set(_ORDER) != {f.name for f in dataclasses.fields(Prediction)}:
    raise ImportError("handoff._ORDER must name every field of Prediction")
_SETTERS = tuple(getattr(Prediction, name).__set__ for name in _ORDER)


def _built(values: tuple[Any, ...]) -> Prediction:
    """The prediction of checked values in :data:`_ORDER`, set as its ``__init__`` sets
    them, without the keyword matching that took more than half of this path's time."""
    made = object.__new__(Prediction)
    for put, value in zip(_SETTERS, values, strict=True):
        put(made, value)
    return made


_MODES = {mode.value: mode for mode in Mode}
_KINDS = {kind.value: kind for kind in ErrorKind}


def _member(members: dict[str, Any], value: Any, what: str) -> Any:
    try:
        return members[value]
    except (KeyError, TypeError):
        raise ValueError(f"{what} {value!r}: expected one of {sorted(members)}") from None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _whole(value: Any) -> int | None:
    return None if value is None else int(value)


def _aware(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise ValueError(f"a time without a time zone: {text!r}")
    return at
