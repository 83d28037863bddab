"""Canonical values that flow through the pipeline.

Every connector turns whatever it reads into these models; nothing past
``connectors/`` sees a raw record, a Kafka message or an HTTP request.
All timestamps are timezone-aware UTC: a naive timestamp in the input is read
as UTC, because exports from ticketing systems routinely drop the offset.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A datetime normalised to UTC; naive input is taken to be UTC already."""

NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Frozen(BaseModel):
    # Ids in real exports are often numbers (ticket 48213); they are still ids.
    model_config = ConfigDict(frozen=True, coerce_numbers_to_str=True, extra="ignore")


class Event(_Frozen):
    """An input the AI would act on.

    ``key`` names the case (ticket, thread) that outcomes join on;
    ``routing_key`` is what traffic splitting hashes and defaults to ``key``.
    """

    event_id: NonEmptyStr
    key: NonEmptyStr
    occurred_at: UtcDatetime
    segment: dict[str, str] = Field(default_factory=dict)
    payload: dict[str, Any] = Field(default_factory=dict)
    routing_key: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _default_routing_key(self) -> Event:
        if self.routing_key is None:
            object.__setattr__(self, "routing_key", self.key)
        return self


class Outcome(_Frozen):
    """What a human decided for a case. The latest ``decided_at`` of a key is final."""

    key: NonEmptyStr
    outcome: Any
    decided_at: UtcDatetime
    actor: str | None = None


class Mode(enum.StrEnum):
    SHADOW = "shadow"
    LIVE = "live"


class PredictionError(_Frozen):
    """Why a candidate produced no usable output: exception type and message."""

    type: str
    message: str


class Prediction(_Frozen):
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
    latency_ms: float
    error: PredictionError | None = None
    predicted_at: UtcDatetime

    @property
    def ok(self) -> bool:
        return self.error is None


class Verdict(enum.StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"


class Comparison(_Frozen):
    """A prediction judged against the final outcome of its key.

    ``fields`` holds per-field verdicts when the comparator looks at fields.
    """

    event_id: str
    candidate: str
    version: str | None = None
    comparator: str
    agree: bool
    fields: dict[str, bool] = Field(default_factory=dict)
    outcome_decided_at: UtcDatetime
    compared_at: UtcDatetime


class RecordKind(enum.StrEnum):
    EVENT = "event"
    OUTCOME = "outcome"


class DeadLetter(_Frozen):
    """A record that could not become an Event or Outcome, kept with why."""

    kind: RecordKind
    source: str
    position: str
    raw: str
    reason: str
    received_at: UtcDatetime


def utc_now() -> datetime:
    """The default clock; everything that reads time takes a ``now`` callable instead."""
    return datetime.now(UTC)
