"""Review verdicts read from a source: mapped, stored, or dead-lettered with the reason.

A verdict source (``sources.verdicts``) is read by the same loop as events and outcomes,
and its positions are committed only after the store has committed. A record becomes a
:class:`shadow.store.verdicts.Verdict` through ``mapping.verdicts``; one that cannot,
or whose verdict the store refuses (an unknown review, a review already decided
otherwise, an edit without its output), becomes a dead letter of kind ``verdict`` with
its raw text, position and reason. A verdict read again after a restart is the same
verdict: nothing is added.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict

from connectors.base import RawRecord
from connectors.mapping import Mapper, dead_letter, map_records
from connectors.specs import VerdictMapping
from shadow.core.models import DeadLetter, NonEmptyStr, RecordKind, UtcDatetime
from shadow.store.database import Store
from shadow.store.verdicts import Verdict, record_verdicts, verdict_named


def _a_verdict(value: str) -> str:
    named = verdict_named(value)
    if named is None:
        raise ValueError("expected approve, edit or reject (or approved, edited, rejected)")
    return named


class VerdictRecord(BaseModel):
    """A verdict as a record has it, validated."""

    model_config = ConfigDict(frozen=True, coerce_numbers_to_str=True, extra="ignore")

    review_id: NonEmptyStr
    verdict: Annotated[str, AfterValidator(_a_verdict)]
    output: Any = None
    reviewer: str | None = None
    decided_at: UtcDatetime


class VerdictMapper(Mapper[VerdictRecord]):
    kind = RecordKind.VERDICT
    model = VerdictRecord

    def __init__(self, mapping: VerdictMapping | None = None) -> None:
        mapping = mapping or VerdictMapping()
        super().__init__(mapping.model_dump(exclude_none=True),
                         canonical=mapping == VerdictMapping())


def take_verdicts(store: Store, records: list[RawRecord], mapper: VerdictMapper,
                  now: datetime) -> tuple[int, list[DeadLetter]]:
    """Store the verdicts of a batch of records (one transaction); returns how many were
    taken (stored, or the same as stored) and the dead letters of the others, for the
    caller to write before it commits the source's position."""
    mapped, dead = map_records(records, mapper, RecordKind.VERDICT, now)
    found = [(Verdict(r.review_id, r.verdict, r.output, r.reviewer, r.decided_at,
                      record.source, record.position), record) for r, record in mapped]
    answers = record_verdicts(store, [v for v, _ in found], received_at=now)
    taken = 0
    for (_, problem), (_, record) in zip(answers, found, strict=True):
        if problem is None:
            taken += 1
        else:
            dead.append(dead_letter(record, RecordKind.VERDICT, str(problem), now))
    return taken, dead
