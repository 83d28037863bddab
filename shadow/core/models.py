"""Canonical values that flow through the pipeline.

Every connector turns whatever it reads into these models; nothing past
``connectors/`` sees a raw record, a Kafka message or an HTTP request.
All timestamps are timezone-aware UTC: a naive timestamp in the input is read
as UTC, because exports from ticketing systems routinely drop the offset.

Events, Outcomes and dead letters come from outside and are pydantic models,
validated on the way in. Predictions and Comparisons are made only by this
code, one per event, so they are frozen dataclasses: on the reference machine
building a pydantic model costs 5-7 µs against 1.5 µs for a dataclass, which
is a third of the whole per-event budget of a replay. Pydantic still
validates and serialises them at boundaries, through ``TypeAdapter``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
)


def _as_utc(value: datetime) -> datetime:
    # Only naive values are touched: an aware value is already unambiguous, and
    # converting every one would cost a call per event on the hot path.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _present(value: Any) -> Any:
    # A null attribute (a Parquet struct field, a JSON null) means "not known":
    # the event is simply left out of that slice, as when the attribute is absent.
    if type(value) is dict and None in value.values():
        return {name: item for name, item in value.items() if item is not None}
    return value


def _json_object(value: Any) -> dict[str, Any]:
    # A payload is whatever JSON object the source had; checking only that it is
    # an object avoids copying it key by key (2 µs per event on a replay).
    if type(value) is not dict:
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""An aware datetime; naive input is taken to be UTC."""

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Frozen(BaseModel):
    # Ids in real exports are often numbers (ticket 48213); they are still ids.
    model_config = ConfigDict(frozen=True, coerce_numbers_to_str=True, extra="ignore")


class Event(_Frozen):
    """An input the AI would act on.

    ``key`` names the case (ticket, thread) that outcomes join on;
    ``routing_key`` is what traffic splitting hashes; without one, ``key`` is
    used (see :attr:`route`).
    """

    event_id: NonEmptyStr
    key: NonEmptyStr
    occurred_at: UtcDatetime
    segment: Annotated[dict[str, str], BeforeValidator(_present)] = Field(default_factory=dict)
    payload: Annotated[dict[str, Any], PlainValidator(_json_object)] = Field(default_factory=dict)
    routing_key: NonEmptyStr | None = None

    @property
    def route(self) -> str:
        """The value traffic splitting hashes: ``routing_key``, else ``key``."""
        return self.routing_key or self.key


class Outcome(_Frozen):
    """What a human decided for a case. The latest ``decided_at`` of a key is final."""

    key: NonEmptyStr
    outcome: Any
    decided_at: UtcDatetime
    actor: str | None = None


class Mode(enum.StrEnum):
    SHADOW = "shadow"
    LIVE = "live"


class ErrorKind(enum.StrEnum):
    """What went wrong, in words a person filtering errors would use."""

    EXCEPTION = "exception"
    """The candidate (a Python callable) raised."""
    NOT_JSON = "not_json"
    """The output is not a JSON value."""
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    """The endpoint could not be reached, or dropped the connection."""
    HTTP_STATUS = "http_status"
    """The endpoint answered with an error status."""
    CIRCUIT_OPEN = "circuit_open"
    """Not called: the endpoint kept failing and the circuit breaker was open."""
    MALFORMED_RESPONSE = "malformed_response"
    """The endpoint answered, but not with what was expected (not JSON, no output)."""
    SCHEMA_MISMATCH = "schema_mismatch"
    """The answer is JSON but does not fit the configured JSON schema."""


@dataclass(frozen=True, slots=True)
class PredictionError:
    """Why a candidate produced no usable output.

    ``body`` keeps the start of a malformed or failed response for debugging.
    """

    type: str
    message: str
    kind: ErrorKind = ErrorKind.EXCEPTION
    body: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """One candidate's output for one event.

    Exactly one of ``output`` and ``error`` is meaningful: when ``error`` is set
    the prediction counts towards the error rate and never towards agreement.
    """

    event_id: str
    candidate: str
    version: str | None = None
    mode: Mode = Mode.SHADOW
    output: Any = None
    confidence: float | None = None
    abstained: bool = False
    """Less confident than the candidate's ``abstain_below``: never compared or acted on."""
    latency_ms: float
    error: PredictionError | None = None
    predicted_at: datetime
    # What the call to a remote candidate looked like; None for in-process ones.
    status: int | None = None
    """The HTTP status of the last attempt."""
    attempts: int = 1
    ttfb_ms: float | None = None
    """Time to the first byte of the response, of the last attempt."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    model: str | None = None
    """The model the server says answered, which may differ from the one asked for."""
    # How the router sent the event, when a rollout is configured.
    review: bool = False
    """A live decision also sent for a person to confirm or correct."""
    step: int | None = None
    """The rollout step the event was routed at."""
    violations: tuple[str, ...] = ()
    """Hard-constraint violations, e.g. ``pii:email matched at output.reply``: the
    check's name, a space, what was wrong. A live decision with any is never published."""
    request: Any = field(default=None, compare=False, repr=False)
    """The JSON body a chat candidate sent (messages after templating, tools, parameters,
    model; never headers), kept once per distinct content in the store's ``requests``."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """A prediction judged against the final outcome of its key.

    ``fields`` holds per-field verdicts when the comparator looks at fields;
    ``note`` says why (a score such as ``f1=0.667``, the judge's reason), when the
    comparator gave one. A comparator that could not judge yields no comparison.
    """

    event_id: str
    candidate: str
    version: str | None = None
    comparator: str
    agree: bool
    fields: dict[str, bool] = field(default_factory=dict)
    note: str | None = None
    outcome_decided_at: datetime
    compared_at: datetime


class RecordKind(enum.StrEnum):
    EVENT = "event"
    OUTCOME = "outcome"
    VERDICT = "verdict"


class DeadLetter(_Frozen):
    """A record that could not become an Event, an Outcome or a review verdict, kept with why."""

    kind: RecordKind
    source: str
    position: str
    raw: str
    reason: str
    received_at: UtcDatetime


def utc_now() -> datetime:
    """The default clock; everything that reads time takes a ``now`` callable instead."""
    return datetime.now(UTC)
