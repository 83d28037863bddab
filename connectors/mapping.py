"""Field mapping: from any record shape to canonical Events and Outcomes.

The same mapping serves files, Kafka and webhooks. A record that cannot be
mapped or fails validation becomes a :class:`~shadow.core.models.DeadLetter` with a
reason a person can act on ("missing field 'key' (path 'ticket.id')"). A record
the mapping's ``when`` leaves out (:mod:`connectors.conditions`) is neither: it is
skipped, and only counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from connectors.base import RawRecord
from connectors.conditions import Condition, Predicate, compile_condition
from connectors.specs import ActionTemplate, EventMapping, OutcomeMapping
from shadow.core.actions import ACTIONS_KEY
from shadow.core.models import DeadLetter, Event, Outcome, RecordKind
from shadow.core.paths import MISSING, get_path

M = TypeVar("M", bound=BaseModel)


class MappingFailed(Exception):
    """A record could not be mapped; the message is the dead-letter reason."""


class Mapper(Generic[M]):
    """Turns a decoded record into a canonical model, or raises :class:`MappingFailed`."""

    kind: RecordKind
    model: type[M]

    when: Predicate | None
    """Whether a record is one to map (the mapping's ``when``); None: every record."""

    def __init__(
        self, paths: dict[str, Any], *, canonical: bool, when: Condition | None = None
    ) -> None:
        self._paths = paths
        # Canonical records already have the right shape: validating the dict
        # as it is skips one copy per record on the hot path.
        self._canonical = canonical
        self.when = compile_condition(when) if when is not None else None

    @property
    def canonical(self) -> bool:
        """Whether records are validated as they are (the default mapping)."""
        return self._canonical

    def shape(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with each canonical field where the model expects it, before
        validation: the record itself for the default mapping."""
        return record if self._canonical else self._reshape(record)

    def __call__(self, record: dict[str, Any]) -> M:
        shaped = record if self._canonical else self._reshape(record)
        try:
            return self.model.model_validate(shaped)
        except ValidationError as exc:
            raise MappingFailed(self._explain(exc)) from None

    def _reshape(self, record: dict[str, Any]) -> dict[str, Any]:
        shaped: dict[str, Any] = {}
        for field, path in self._paths.items():
            if isinstance(path, dict):
                shaped[field] = _segment(record, path)
                continue
            value = get_path(record, path)
            if value is not MISSING and value is not None:
                shaped[field] = value
        return shaped

    def _explain(self, exc: ValidationError) -> str:
        reasons = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "record"
            where = f"field '{field}'"
            path = self._paths.get(field)
            detail = ".".join(str(part) for part in error["loc"][1:])
            if isinstance(path, dict) and detail in path:
                where, detail = f"segment '{detail}' (path '{path[detail]}')", ""
            elif isinstance(path, str) and path != field:
                where += f" (path '{path}')"
            if error["type"] == "missing":
                reasons.append(f"missing {where}")
                continue
            got = error.get("input")
            shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
            reasons.append(
                f"{where}{' ' + detail if detail else ''}: {error['msg'].lower()}, got {shown}"
            )
        return "; ".join(reasons)


def _segment(record: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    # A segment attribute the record lacks is simply absent: slicing by it
    # just leaves this event out of that slice.
    segment = {}
    for name, path in paths.items():
        value = get_path(record, path)
        if value is not MISSING and value is not None:
            segment[name] = value
    return segment


class EventMapper(Mapper[Event]):
    kind = RecordKind.EVENT
    model = Event

    def __init__(self, mapping: EventMapping | None = None) -> None:
        mapping = mapping or EventMapping()
        super().__init__(mapping.model_dump(exclude_none=True, exclude={"when"}),
                         canonical=mapping.model_copy(update={"when": None}) == EventMapping(),
                         when=mapping.when)


class OutcomeMapper(Mapper[Outcome]):
    kind = RecordKind.OUTCOME
    model = Outcome

    def __init__(self, mapping: OutcomeMapping | None = None) -> None:
        mapping = mapping or OutcomeMapping()
        paths = mapping.model_dump(exclude_none=True, exclude={"actions", "when"})
        super().__init__(paths,
                         canonical=mapping.model_copy(update={"when": None}) == OutcomeMapping(),
                         when=mapping.when)
        self._actions = mapping.actions

    def _reshape(self, record: dict[str, Any]) -> dict[str, Any]:
        shaped = super()._reshape(record)
        if self._actions is not None:
            shaped["outcome"] = self._with_actions(record, shaped.get("outcome"))
        return shaped

    def _with_actions(self, record: dict[str, Any], outcome: Any) -> dict[str, Any]:
        """The outcome with the record's actions under ``actions``.

        Raises:
            MappingFailed: the actions or their arguments are not where the mapping
                says, or the outcome is a value that cannot hold them.
        """
        if outcome is not None and not isinstance(outcome, dict):
            raise MappingFailed(f"{self._where('outcome')}: expected an object to hold the "
                                f"actions, got {_shown(outcome)}")
        spec = self._actions
        if isinstance(spec, ActionTemplate):
            arguments = self._found(record, "actions.arguments", spec.arguments, dict, "an object")
            actions: list[Any] = [{"tool": spec.tool, "arguments": arguments}]
        else:
            actions = self._found(record, "actions", str(spec), list, "a list of actions")
        return {**(outcome or {}), ACTIONS_KEY: actions}

    def _found(self, record: dict[str, Any], field: str, path: str, kind: type, what: str) -> Any:
        value = get_path(record, path)
        where = f"field '{field}' (path '{path}')"
        if value is MISSING or value is None:
            raise MappingFailed(f"missing {where}")
        if not isinstance(value, kind):
            raise MappingFailed(f"{where}: expected {what}, got {_shown(value)}")
        return value

    def _where(self, field: str) -> str:
        path = self._paths.get(field)
        return f"field '{field}'" + (f" (path '{path}')" if path != field else "")


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, dict | list) else type(value).__name__


def map_records(
    records: Iterable[RawRecord],
    mapper: Callable[[dict[str, Any]], M],
    kind: RecordKind,
    now: datetime,
) -> tuple[list[tuple[M, RawRecord]], list[DeadLetter]]:
    """Map a batch: canonical values paired with their record, and dead letters.

    A record the mapper's ``when`` leaves out is in neither list, so a batch's
    skipped records are ``len(records) - len(mapped) - len(dead)``; so is a record with
    no content at all (a Kafka tombstone: no value, no raw text, no error). An
    undecodable record is a dead letter whatever ``when`` says: there is nothing to test.
    """
    mapped: list[tuple[M, RawRecord]] = []
    dead: list[DeadLetter] = []
    when = mapper.when if isinstance(mapper, Mapper) else None
    for record in records:
        if record.value is None:
            if record.raw is None and record.error is None:
                continue  # a tombstone: nothing to map
            dead.append(dead_letter(record, kind, record.error or "undecodable record", now))
            continue
        if when is not None and not when(record.value):
            continue
        try:
            item = mapper(record.value)
        except MappingFailed as exc:
            dead.append(dead_letter(record, kind, str(exc), now))
            continue
        problem = unstorable(item)
        if problem is not None:
            dead.append(dead_letter(record, kind, problem, now))
            continue
        mapped.append((item, record))
    return mapped, dead


def unstorable(item: Any) -> str | None:
    """Why a mapped event or outcome cannot be stored, or ``None``.

    The store keeps payloads, segments and outcomes as JSON written by orjson,
    which reads JSON nested up to 1,024 levels but writes at most 254, and
    writes neither integers beyond 64 bits nor types JSON has no word for
    (a ``Decimal``, ``bytes``). Timestamps are kept in UTC, and read back as
    Python datetimes, which end at the years 1 and 9999: ``0001-01-01T00:00+01:00``
    could be written, and then not read by the comparison or the next replay.
    Such a record is caught here, before any candidate sees it, instead of
    failing the write of its whole batch or a later read.
    """
    # The fields a model declares, not ``hasattr``: on a pydantic model a missing
    # attribute raises inside ``__getattr__``, which cost 10 µs per event.
    declared = type(item).model_fields if isinstance(item, BaseModel) else None

    def has(name: str) -> bool:
        return name in declared if declared is not None else hasattr(item, name)

    for name in ("payload", "segment", "outcome"):
        if not has(name):
            continue
        try:
            orjson.dumps(getattr(item, name))
        except (TypeError, orjson.JSONEncodeError) as exc:
            return f"the record's {name} cannot be stored as JSON: {exc}"
    for name in ("occurred_at", "decided_at"):
        at = getattr(item, name) if has(name) else None
        if at is None:
            continue
        try:
            at.astimezone(UTC)
        except OverflowError:
            return f"the record's {name} {at.isoformat()} is outside the years 1 to 9999 in UTC"
    return None


def dead_letter(record: RawRecord, kind: RecordKind, reason: str, now: datetime) -> DeadLetter:
    return DeadLetter(
        kind=kind,
        source=record.source,
        position=record.position,
        raw=record.raw_text(),
        reason=reason,
        received_at=now,
    )
