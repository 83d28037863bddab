"""Compare: each pending prediction against the final outcome of its key.

Which predictions are pending is the store's answer
(:meth:`shadow.store.database.Store.pending_comparisons`): not yet compared, or their
key got a later outcome, or the comparator's configuration changed. A
prediction whose judgement was deferred stays pending.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from shadow.compare.comparators import Comparator
from shadow.core.models import Comparison, utc_now
from shadow.store.database import Store

log = structlog.get_logger(__name__)


MAX_CONSECUTIVE_DEFERRALS = 5
"""After this many deferred judgements in a row, a compare run stops asking the
comparator and defers the rest of its pending predictions: a judge that is down
is not called once per prediction (each call with its own retries)."""


class CompareTally(Protocol):
    """Where a compare run adds up what it did (a replay's summary is one)."""

    compared: int
    agreed: int
    deferred: int


@dataclass(slots=True)
class _Deferrals:
    """The deferred judgements of one compare run."""

    count: int = 0
    in_a_row: int = 0
    last_note: str | None = None

    @property
    def giving_up(self) -> bool:
        return self.in_a_row >= MAX_CONSECUTIVE_DEFERRALS


def compare(
    store: Store,
    comparator: Comparator,
    summary: CompareTally | None = None,
    *,
    now: Callable[[], datetime] = utc_now,
) -> int:
    """Compare every pending prediction with the final outcome of its key.

    A deferred judgement (:meth:`shadow.compare.comparators.Judgement.defer`: the judge
    could not be asked) writes nothing, so its prediction stays pending for the
    next run; after :data:`MAX_CONSECUTIVE_DEFERRALS` in a row the rest of this
    run is deferred without asking. Deferrals are counted in
    ``summary.deferred`` and logged as one warning per run.

    Returns how many comparisons were (re)made.
    """
    made = 0
    deferrals = _Deferrals()
    for chunk in store.pending_comparisons(comparator.name):
        compared_at = now()
        comparisons = list(_judge(chunk, comparator, compared_at, deferrals))
        store.write_comparisons(comparisons)
        made += len(comparisons)
        if summary is not None:
            summary.compared += len(comparisons)
            summary.agreed += sum(c.agree for c in comparisons)
    if summary is not None:
        summary.deferred += deferrals.count
    if deferrals.count:
        log.warning("comparisons deferred", comparator=comparator.name,
                    deferred=deferrals.count, compared=made,
                    gave_up=deferrals.giving_up, last_error=deferrals.last_note)
    return made


def _judge(
    chunk: Iterable[Any], comparator: Comparator, at: datetime, deferrals: _Deferrals
) -> Iterable[Comparison]:
    """The comparisons of a chunk; deferred items yield nothing and are counted."""
    for item in chunk:
        if deferrals.giving_up:
            deferrals.count += 1
            continue
        judgement = comparator.compare(item.output, item.outcome)
        if judgement.deferred:
            deferrals.count += 1
            deferrals.in_a_row += 1
            deferrals.last_note = judgement.note
            continue
        deferrals.in_a_row = 0
        yield Comparison(
            event_id=item.event_id, candidate=item.candidate, version=item.version,
            comparator=comparator.name, agree=judgement.agree, fields=judgement.fields,
            note=judgement.note, outcome_decided_at=item.decided_at, compared_at=at,
        )
