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

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shadow.core.fixed_sample import wilson
from shadow.core.models import utc_now
from shadow.store.database import Store

Key = tuple[str, str | None]


def agreement(agreed: int, compared: int) -> dict[str, Any]:
    interval = wilson(agreed, compared)
    return {"rate": interval.rate, "low": interval.low, "high": interval.high, "method": "wilson"}


def build_report(store: Store, *, now: Callable[[], datetime] = utc_now) -> dict[str, Any]:
    """The report of everything in the store, as plain JSON-ready values."""
    db = store.db
    events = store.count("events")
    duplicates = store.count("duplicates")
    dead = dict(db.execute("SELECT kind, count(*) FROM dead_letters GROUP BY kind").fetchall())
    compared = _compared(store)
    segments = _segments(store)
    fields = _fields(store)
    errors = _error_kinds(store)
    violation_kinds = _violation_kinds(store)

    candidates = []
    for row in db.execute(_CANDIDATES_SQL).fetchall():
        name, version, predictions, failed, abstained, violated, prompt, completion, cost, \
            *latency = row
        p50, p95, p99 = latency
        key = (name, version)
        n_compared, n_agreed, comparators = compared.get(key, (0, 0, []))
        handled = predictions - failed - abstained
        candidates.append({
            "name": name,
            "version": version,
            "events": events,
            "predictions": predictions,
            "errors": failed,
            "error_rate": failed / predictions if predictions else None,
            "compared": n_compared,
            "pending": handled - n_compared,
            "abstained": abstained,
            "coverage": handled / predictions if predictions else None,
            "violations": violated,
            "violation_rate": violated / (predictions - failed) if predictions > failed
            else None,
            "violation_kinds": violation_kinds.get(key, []),
            "agreement": agreement(n_agreed, n_compared),
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99},
            "tokens": {"prompt": prompt, "completion": completion},
            "cost": {"total": cost, "per_prediction": cost / predictions if cost is not None
                     else None},
            "segments": segments.get(key, []),
            "fields": fields.get(key, []),
            "error_kinds": errors.get(key, []),
            "comparators": comparators,
        })
    return {
        "generated_at": now().isoformat(),
        "store": str(store.path),
        "candidates": candidates,
        "events_read": events + duplicates + dead.get("event", 0),
        "events_stored": events,
        "duplicates": duplicates,
        "dead_letters": dead.get("event", 0),
        "outcomes": _outcomes(store, dead.get("outcome", 0)),
    }


_CANDIDATES_SQL = """
SELECT candidate, version, count(*) AS predictions,
       count(*) FILTER (WHERE error_type IS NOT NULL) AS errors,
       count(*) FILTER (WHERE abstained) AS abstained,
       count(violations) AS violations,
       sum(prompt_tokens), sum(completion_tokens), sum(cost),
       quantile_cont(latency_ms, 0.50), quantile_cont(latency_ms, 0.95),
       quantile_cont(latency_ms, 0.99)
FROM predictions
GROUP BY candidate, version
ORDER BY candidate, version NULLS FIRST
"""


def _compared(store: Store) -> dict[Key, tuple[int, int, list[str]]]:
    rows = store.db.execute(
        "SELECT candidate, version, count(*), count(*) FILTER (WHERE agree), "
        "       list(DISTINCT comparator ORDER BY comparator) "
        "FROM comparisons GROUP BY candidate, version"
    ).fetchall()
    return {(c, v): (n, a, list(names)) for c, v, n, a, names in rows}


def _segments(store: Store) -> dict[Key, list[dict[str, Any]]]:
    rows = store.db.execute(
        "SELECT c.candidate, c.version, s.field, s.value, count(*), "
        "       count(*) FILTER (WHERE c.agree) "
        "FROM comparisons c JOIN event_segments s USING (event_id) "
        "GROUP BY ALL ORDER BY s.field, s.value"
    ).fetchall()
    out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for candidate, version, name, value, n, agreed in rows:
        out[(candidate, version)].append(
            {"field": name, "value": value, "compared": n, "agreement": agreement(agreed, n)}
        )
    return out


def _fields(store: Store) -> dict[Key, list[dict[str, Any]]]:
    rows = store.db.execute(
        "SELECT candidate, version, field, count(*), count(*) FILTER (WHERE agree) "
        "FROM comparison_fields GROUP BY ALL ORDER BY field"
    ).fetchall()
    out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for candidate, version, name, n, agreed in rows:
        out[(candidate, version)].append(
            {"field": name, "compared": n, "agreement": agreement(agreed, n)}
        )
    return out


def _error_kinds(store: Store) -> dict[Key, list[dict[str, Any]]]:
    return _kinds(store, "type",
                  "SELECT candidate, version, error_type, count(*), any_value(error_message) "
                  "FROM predictions WHERE error_type IS NOT NULL "
                  "GROUP BY ALL ORDER BY count(*) DESC, error_type")


def _violation_kinds(store: Store) -> dict[Key, list[dict[str, Any]]]:
    """Violations by check (the first word of each violation text), most frequent first."""
    return _kinds(store, "check",
                  "SELECT candidate, version, split_part(v, ' ', 1) AS check_name, count(*), "
                  "       any_value(v) "
                  "FROM (SELECT candidate, version, unnest(violations) AS v FROM predictions "
                  "      WHERE violations IS NOT NULL) "
                  "GROUP BY ALL ORDER BY count(*) DESC, check_name")


def _kinds(store: Store, named: str, sql: str) -> dict[Key, list[dict[str, Any]]]:
    """Rows of (candidate, version, kind, count, example) by candidate; the kind as ``named``."""
    out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
    for candidate, version, kind, n, example in store.db.execute(sql).fetchall():
        out[(candidate, version)].append({named: kind, "count": n, "example": example})
    return out


def _outcomes(store: Store, dead_letters: int) -> dict[str, Any]:
    ((stored, keys),) = store.db.execute(
        "SELECT count(*), count(DISTINCT key) FROM outcomes"
    ).fetchall()
    return {"stored": stored, "keys": keys, "dead_letters": dead_letters}


def recent_dead_letters(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """The latest dead letters, newest first, with their raw text."""
    rows = store.db.execute(
        "SELECT kind, source, position, reason, raw, received_at FROM dead_letters "
        "ORDER BY received_at DESC, source, position LIMIT ?",
        [limit],
    ).fetchall()
    return [
        {"kind": k, "source": s, "position": p, "reason": r, "raw": raw,
         "received_at": at.isoformat()}
        for k, s, p, r, raw, at in rows
    ]
