"""The comparison report: what each candidate would have done and how often it agreed.

All aggregation happens in DuckDB; Python only shapes the few result rows.
The JSON shape is a contract that later sections extend but never break::

    {"candidates": [{"name", "version", "events", "predictions", "errors",
                     "compared", "pending",
                     "agreement": {"rate", "low", "high", "method": "wilson"},
                     "latency_ms": {"p50", "p95", "p99"},  # null when every call failed
                     "segments": [{"field", "value", "compared", "agreement"}]}],
     "events_read": int, "duplicates": int, "dead_letters": int}

``agreement.rate`` is agreeing / compared; ``low`` and ``high`` bound the 95 %
Wilson score interval. Errored predictions are never compared: they count in
``errors`` and ``error_rate`` only. Abstentions (less confident than the
candidate's ``abstain_below``) are not compared either: ``coverage`` is the
share of predictions the AI would act on, and agreement is measured on those.
Hard-constraint violations are counted per candidate (``violations``, and
``violation_rate`` of the predictions checked, i.e. not errored) and by check
in ``violation_kinds``; violating predictions are still compared.

:func:`core_report` returns it as :class:`CoreReport`, frozen values whose fields are the
keys above in order; :meth:`CoreReport.as_dict` is its JSON (:mod:`shadow.reports.values`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shadow.core.fixed_sample import wilson
from shadow.core.models import utc_now
from shadow.reports.queries import Compared, DeadLetterRow, Key, Queries, Totals
from shadow.reports.values import as_json, from_json
from shadow.store.database import Store


@dataclass(frozen=True, slots=True)
class Agreement:
    """Agreeing / compared with its 95 % Wilson score interval; ``None`` when none compared."""

    rate: float | None
    low: float | None
    high: float | None
    method: str = "wilson"

    @classmethod
    def of(cls, agreed: int, compared: int) -> Agreement:
        interval = wilson(agreed, compared)
        return cls(interval.rate, interval.low, interval.high)


@dataclass(frozen=True, slots=True)
class Latency:
    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class Tokens:
    prompt: int | None
    completion: int | None


@dataclass(frozen=True, slots=True)
class Cost:
    total: float | None
    per_prediction: float | None


@dataclass(frozen=True, slots=True)
class SegmentAgreement:
    field: str
    value: str
    compared: int
    agreement: Agreement


@dataclass(frozen=True, slots=True)
class FieldAgreement:
    field: str
    compared: int
    agreement: Agreement


@dataclass(frozen=True, slots=True)
class ErrorKind:
    type: str
    count: int
    example: str | None
    """The smallest message of this type."""


@dataclass(frozen=True, slots=True)
class ViolationKind:
    check: str
    count: int
    example: str | None
    """The smallest violation text of this check."""


@dataclass(frozen=True, slots=True)
class CandidateSummary:
    """One candidate (name and version): what it predicted and how often it agreed."""

    name: str
    version: str | None
    events: int
    predictions: int
    errors: int
    error_rate: float | None
    compared: int
    pending: int
    abstained: int
    coverage: float | None
    violations: int
    violation_rate: float | None
    violation_kinds: tuple[ViolationKind, ...]
    agreement: Agreement
    latency_ms: Latency
    tokens: Tokens
    cost: Cost
    segments: tuple[SegmentAgreement, ...]
    fields: tuple[FieldAgreement, ...]
    error_kinds: tuple[ErrorKind, ...]
    comparators: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutcomeCounts:
    stored: int
    keys: int
    dead_letters: int


@dataclass(frozen=True, slots=True)
class CoreReport:
    """The report of everything in a store; see the module's docstring for its figures."""

    generated_at: datetime
    store: str
    candidates: tuple[CandidateSummary, ...]
    events_read: int
    """Stored + duplicates + dead letters."""
    events_stored: int
    duplicates: int
    dead_letters: int
    outcomes: OutcomeCounts

    def as_dict(self) -> dict[str, Any]:
        """The JSON of the report (the contract above), as plain values."""
        out: dict[str, Any] = as_json(self)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoreReport:
        """The report again from :meth:`as_dict`'s values (keys it does not know ignored)."""
        return from_json(cls, data)


def core_report(store: Store, *, now: Callable[[], datetime] = utc_now,
                queries: Queries | None = None) -> CoreReport:
    """The report of everything in the store; read from ``queries`` when given (the owner
    report's, so that a full report asks each shared figure once)."""
    q = queries if queries is not None else Queries(store)
    counts = q.counts
    return CoreReport(
        generated_at=now(),
        store=str(store.path),
        candidates=tuple(_candidate(q, key, totals, counts.events)
                         for key, totals in q.totals.items()),
        events_read=counts.events + counts.duplicates + counts.event_dead_letters,
        events_stored=counts.events,
        duplicates=counts.duplicates,
        dead_letters=counts.event_dead_letters,
        outcomes=OutcomeCounts(counts.outcomes, counts.outcome_keys, counts.outcome_dead_letters),
    )


def build_report(store: Store, *, now: Callable[[], datetime] = utc_now) -> dict[str, Any]:
    """:func:`core_report` as plain JSON-ready values, for callers that want the JSON."""
    return core_report(store, now=now).as_dict()


def _candidate(q: Queries, key: Key, t: Totals, events: int) -> CandidateSummary:
    compared = q.compared.get(key, Compared(0, 0, ()))
    predictions, failed = t.predictions, t.errors
    handled = predictions - failed - t.abstained
    return CandidateSummary(
        name=key[0],
        version=key[1],
        events=events,
        predictions=predictions,
        errors=failed,
        error_rate=failed / predictions if predictions else None,
        compared=compared.compared,
        pending=handled - compared.compared,
        abstained=t.abstained,
        coverage=handled / predictions if predictions else None,
        violations=t.violations,
        violation_rate=t.violations / (predictions - failed) if predictions > failed else None,
        violation_kinds=tuple(ViolationKind(k.kind, k.count, k.example)
                              for k in q.violation_texts.get(key, [])),
        agreement=Agreement.of(compared.agreed, compared.compared),
        # Every call failed: nothing was timed doing its work.
        latency_ms=(Latency(None, None, None) if failed == predictions
                    else Latency(t.p50, t.p95, t.p99)),
        tokens=Tokens(t.prompt_tokens, t.completion_tokens),
        cost=Cost(t.cost, t.cost / predictions if t.cost is not None else None),
        segments=tuple(SegmentAgreement(s.field, s.value, s.compared,
                                        Agreement.of(s.agreed, s.compared))
                       for s in q.segments.get(key, [])),
        fields=tuple(FieldAgreement(f.field, f.compared, Agreement.of(f.agreed, f.compared))
                     for f in q.fields.get(key, [])),
        error_kinds=tuple(ErrorKind(k.kind, k.count, k.example)
                          for k in q.error_kinds.get(key, [])),
        comparators=compared.comparators,
    )


def recent_dead_letters(store: Store, limit: int = 20) -> list[DeadLetterRow]:
    """The latest dead letters, newest first, with their raw text."""
    return Queries(store).recent_dead_letters(limit)
