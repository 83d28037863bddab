"""One event as governance reads it: what each candidate answered, the request it sent, the
tool calls it executed.

:func:`event_view` reads the event, each of its predictions with the exact request it sent
(table ``requests``, linked by ``predictions.request_hash``: messages after templating,
tools offered, parameters, model; never headers) and the tool calls an agent executed
(table ``tool_calls``), as an :class:`EventView`. ``shadow show`` prints it and the control
API's ``GET /events/{event_id}`` answers it (``as_json``), so both show the same thing.

With ``redact`` paths (the configuration's ``report.redact``), the values at those paths of
the payload are ``[redacted]`` in the payload and wherever they show through: output,
request, error message, violations, tool calls.

    with Store(path, read_only=True) as store:
        view = event_view(store.db, "e1", redact=["email"])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from shadow.core.errors import ConfigError
from shadow.core.redaction import redact as redact_payload
from shadow.core.redaction import redact_within
from shadow.reports.values import as_json, from_json


class EventNotFound(ConfigError):
    """The store has no event of that id."""


class PredictionNotFound(ConfigError):
    """The event has no prediction of the candidate asked for."""


@dataclass(frozen=True, slots=True)
class ShownEvent:
    event_id: str
    key: str
    occurred_at: datetime
    payload: Any


@dataclass(frozen=True, slots=True)
class ShownToolCall:
    """One call an agent executed (``shadow.store.tool_calls``); ``problem`` says why an
    element of the output's list could not be read as a call."""

    ordinal: int | None
    step: int | None
    call_id: str | None
    tool: str | None
    arguments: Any
    result: Any
    latency_ms: float | None
    error: str | None
    problem: str | None


@dataclass(frozen=True, slots=True)
class ShownPrediction:
    """A candidate's prediction; ``asked_model`` is the model its request named, ``model``
    the one that answered. ``request`` is ``None`` when the candidate keeps none (not a
    chat or agent candidate)."""

    candidate: str
    version: str | None
    mode: str
    predicted_at: datetime
    model: str | None
    asked_model: str | None
    output: Any
    error_kind: str | None
    error_type: str | None
    error_message: str | None
    violations: tuple[str, ...]
    latency_ms: float
    status: int | None
    attempts: int
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    request_hash: str | None
    request: Any
    tool_calls: tuple[ShownToolCall, ...]


@dataclass(frozen=True, slots=True)
class EventView:
    """The event and its predictions, by candidate, then time, then version."""

    event: ShownEvent
    predictions: tuple[ShownPrediction, ...]


_PREDICTIONS = """
SELECT p.candidate, p.version, p.mode, p.predicted_at, p.model, r.model AS asked_model,
       p.output, p.error_kind, p.error_type, p.error_message, p.violations, p.latency_ms,
       p.status, p.attempts, p.prompt_tokens, p.completion_tokens, p.cost, p.request_hash,
       r.request
FROM predictions p LEFT JOIN requests r USING (request_hash)
WHERE p.event_id = ? AND (? IS NULL OR p.candidate = ?)
ORDER BY p.candidate, p.predicted_at, p.version
"""

_TOOL_CALLS = """
SELECT ordinal, step, call_id, tool, arguments, result, latency_ms, error, problem
FROM tool_calls
WHERE event_id = ? AND candidate = ? AND version IS NOT DISTINCT FROM ?
ORDER BY ordinal NULLS FIRST
"""

_MEASURES = frozenset({"predicted_at", "latency_ms", "status", "attempts", "prompt_tokens",
                       "completion_tokens", "cost", "ordinal", "step"})
"""Times and numbers the store measured, never echoed from the payload: left as they are by
redaction (a token count that happens to equal a private number is not that number)."""


def event_view(db: duckdb.DuckDBPyConnection, event_id: str, candidate: str | None = None,
               *, redact: Sequence[str] = ()) -> EventView:
    """The event ``event_id`` with its predictions (only ``candidate``'s, if given), their
    requests and tool calls, with the values at the ``redact`` paths of its payload hidden.

    Raises:
        EventNotFound: the store has no such event.
        PredictionNotFound: ``candidate`` is given and made no prediction for it; the
            message names the candidates that did.
    """
    found = db.execute("SELECT event_id, key, occurred_at, payload FROM events "
                       "WHERE event_id = ?", [event_id]).fetchall()
    if not found:
        raise EventNotFound(f"the store has no event {event_id!r}")
    (ident, key, occurred_at, payload), = found
    cursor = db.execute(_PREDICTIONS, [event_id, candidate, candidate])
    names = [column[0] for column in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    if candidate is not None and not rows:
        others = sorted({row[0] for row in db.execute(
            "SELECT candidate FROM predictions WHERE event_id = ?", [event_id]).fetchall()})
        raise PredictionNotFound(f"event {event_id!r} has no prediction of {candidate!r} "
                                 f"(it has: {', '.join(others) or 'none'})")
    event = ShownEvent(ident, key, occurred_at, json.loads(payload))
    view = EventView(event, tuple(_prediction(db, event_id, row) for row in rows))
    return _redacted(view, redact) if redact else view


def _prediction(db: duckdb.DuckDBPyConnection, event_id: str,
                row: dict[str, Any]) -> ShownPrediction:
    calls = db.execute(_TOOL_CALLS, [event_id, row["candidate"], row["version"]])
    names = [column[0] for column in calls.description]
    executed = tuple(_tool_call(dict(zip(names, call, strict=True)))
                     for call in calls.fetchall())
    return ShownPrediction(**{
        **row, "output": _loaded(row["output"]), "request": _loaded(row["request"]),
        "violations": tuple(row["violations"] or ()), "tool_calls": executed})


def _tool_call(row: dict[str, Any]) -> ShownToolCall:
    return ShownToolCall(**{**row, "arguments": _loaded(row["arguments"]),
                            "result": _loaded(row["result"])})


def _loaded(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _redacted(view: EventView, paths: Sequence[str]) -> EventView:
    payload = view.event.payload
    data = as_json(view)
    data["event"]["payload"] = redact_payload(payload, paths)
    data["predictions"] = [_scrubbed(p, payload, paths) for p in data["predictions"]]
    return from_json(EventView, data)


def _scrubbed(value: dict[str, Any], payload: Any, paths: Sequence[str]) -> dict[str, Any]:
    return {key: (item if key in _MEASURES
                  else [_scrubbed(c, payload, paths) for c in item] if key == "tool_calls"
                  else redact_within(item, payload, paths))
            for key, item in value.items()}
