"""The comparison report: what each candidate would have done and how often it agreed.

All aggregation happens in DuckDB; Python only shapes the few result rows.
The JSON shape is a contract that later sections extend but never break::

    {"candidates": [{"name", "version", "events", "predictions", "errors",
                     "compared", "pending",
                     "agreement": {"rate", "low", "high", "method": "wilson"},
                     "latency_ms": {"p50", "p95", "p99"},
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
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from shadow.core.fixed_sample import wilson
from shadow.core.models import utc_now
from shadow.reports.queries import Compared, Key, Queries, Totals
from shadow.store.database import Store


def agreement(agreed: int, compared: int) -> dict[str, Any]:
    interval = wilson(agreed, compared)
    return {"rate": interval.rate, "low": interval.low, "high": interval.high, "method": "wilson"}


def build_report(store: Store, *, now: Callable[[], datetime] = utc_now) -> dict[str, Any]:
    """The report of everything in the store, as plain JSON-ready values."""
    q = Queries(store)
    counts = q.counts
    candidates = [_candidate(q, key, totals, counts.events) for key, totals in q.totals.items()]
    return {
        "generated_at": now().isoformat(),
        "store": str(store.path),
        "candidates": candidates,
        "events_read": counts.events + counts.duplicates + counts.event_dead_letters,
        "events_stored": counts.events,
        "duplicates": counts.duplicates,
        "dead_letters": counts.event_dead_letters,
        "outcomes": {"stored": counts.outcomes, "keys": counts.outcome_keys,
                     "dead_letters": counts.outcome_dead_letters},
    }


def _candidate(q: Queries, key: Key, t: Totals, events: int) -> dict[str, Any]:
    compared = q.compared.get(key, Compared(0, 0, ()))
    predictions, failed = t.predictions, t.errors
    handled = predictions - failed - t.abstained
    return {
        "name": key[0],
        "version": key[1],
        "events": events,
        "predictions": predictions,
        "errors": failed,
        "error_rate": failed / predictions if predictions else None,
        "compared": compared.compared,
        "pending": handled - compared.compared,
        "abstained": t.abstained,
        "coverage": handled / predictions if predictions else None,
        "violations": t.violations,
        "violation_rate": t.violations / (predictions - failed) if predictions > failed
        else None,
        "violation_kinds": [{"check": k.kind, "count": k.count, "example": k.example}
                            for k in q.violation_texts.get(key, [])],
        "agreement": agreement(compared.agreed, compared.compared),
        "latency_ms": {"p50": t.p50, "p95": t.p95, "p99": t.p99},
        "tokens": {"prompt": t.prompt_tokens, "completion": t.completion_tokens},
        "cost": {"total": t.cost, "per_prediction": t.cost / predictions if t.cost is not None
                 else None},
        "segments": [{"field": s.field, "value": s.value, "compared": s.compared,
                      "agreement": agreement(s.agreed, s.compared)}
                     for s in q.segments.get(key, [])],
        "fields": [{"field": f.field, "compared": f.compared,
                    "agreement": agreement(f.agreed, f.compared)}
                   for f in q.fields.get(key, [])],
        "error_kinds": [{"type": k.kind, "count": k.count, "example": k.example}
                        for k in q.error_kinds.get(key, [])],
        "comparators": list(compared.comparators),
    }


def recent_dead_letters(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The latest dead letters, newest first, with their raw text."""
    return Queries(store).recent_dead_letters(limit)
