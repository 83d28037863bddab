"""The owner's report: is each candidate ready, and the evidence behind the answer.

All aggregation happens in DuckDB SQL, one query per section for all
candidates at once; Python only shapes the few result rows (at most a few
hundred per candidate). The returned dict is a contract that the HTML and
Markdown renderings read::

    {"generated_at", "store", "options",
     "candidates": [{"name", "version", "verdict", "agreement", "over_time",
                     "segments", "confusion", "fields", "coverage", "latency",
                     "errors", "violations", "cost", "disagreements"}],
     "human_baseline", "rollout", "legacy"}

Definitions a reader of the numbers needs:

- Intervals are 95 % Wilson score intervals, computed once (not anytime-valid:
  the rollout gates use confidence sequences instead).
- ``over_time`` groups comparisons by the UTC day of their event's ``occurred_at``.
- A segment is below its floor when it has at least ``segment_min_samples``
  comparisons and its agreement *rate* is below the floor (``segment_floor``,
  or ``threshold`` when unset). Smaller segments are shown but never fail.
- ``latency.histogram`` is non-cumulative: ``count`` is the number of
  predictions with latency in (previous ``le_ms``, ``le_ms``]; bounds follow
  a 1-2-5 series, and the last bucket's ``le_ms`` is the largest latency when
  it exceeds the series.
- ``cost.per_decision`` is the mean cost of the predictions that reported one
  (``None`` when none did). ``daily_volume_current`` is the candidate's
  predictions divided by the span of their events' ``occurred_at`` in days
  (last minus first, at least one day). A month is 30 days.
- ``redact`` paths are dotted and relative to the payload (``requester.email``
  means ``payload["requester"]["email"]``); through a list the path applies to
  every element. Only ``disagreements[*].payload`` carries payloads.
- ``violations`` counts hard-constraint violations (``shadow.constraints``) of
  the predictions that were checked, i.e. did not error. ``rate`` is violating
  predictions over checked ones; each of ``kinds`` is one check (the first word
  of a violation text) with the predictions it caught (``predictions``, and
  their share of the checked ones) and its violation texts (``count``).
  ``examples`` are the most recent violating predictions with their texts, no
  payload and no output; a text that quotes a value found at a ``redact`` path
  of its event's payload has that value replaced by ``[redacted]``.
- The human baseline looks at keys with outcomes from more than one distinct
  actor: each outcome whose previous outcome (by ``decided_at``) came from a
  different actor makes a pair, agreeing when the two are the same JSON text.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import orjson

from shadow.models import utc_now
from shadow.redaction import redact, redact_text, redact_within
from shadow.report import build_report
from shadow.stats import wilson
from shadow.store import Store

Key = tuple[str, str | None]

COVERAGE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
LATENCY_BOUNDS_MS = tuple(
    round(m * 10.0**e, 6) for e in range(-1, 6) for m in (1, 2, 5)
) + (1_000_000.0,)
"""Upper bounds of the latency buckets, 0.1 ms to 1,000 s."""
MAX_LABELS = 12
DAYS_PER_MONTH = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerOptions:
    """What "ready" means to this owner, and what the report may show.

    Raises:
        ValueError: a rate outside [0, 1] or a negative count.
    """

    threshold: float = 0.9
    """The Wilson 95 % lower bound of agreement must reach this."""
    max_error_rate: float = 0.05
    max_p95_latency_ms: float | None = None
    min_compared: int = 200
    """Fewer comparisons than this: "not enough data"."""
    segment_min_samples: int = 100
    segment_floor: float | None = None
    """A segment's agreement rate must reach this; ``threshold`` when unset."""
    daily_volume: float | None = None
    """Events per day at full production, for the cost projection."""
    redact: tuple[str, ...] = ()
    """Dotted paths relative to the payload, e.g. ``requester.email``."""
    top_disagreements: int = 20
    max_violation_rate: float | None = None
    """Share of checked predictions allowed to violate a hard constraint; no verdict line
    when unset."""
    top_violations: int = 10
    """How many recent violating predictions to show as examples."""
    prediction_label: str | None = None
    """Dotted path to the label inside outputs, for the confusion matrix (whole output if unset)."""
    outcome_label: str | None = None
    """Dotted path to the label inside outcomes (whole outcome if unset)."""
    now: Callable[[], datetime] = field(default=utc_now, compare=False)

    def __post_init__(self) -> None:
        for name in ("threshold", "max_error_rate", "segment_floor", "max_violation_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        for name in ("min_compared", "segment_min_samples", "top_disagreements",
                     "top_violations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("max_p95_latency_ms", "daily_volume"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def floor(self) -> float:
        return self.threshold if self.segment_floor is None else self.segment_floor

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "now"}
        out["redact"] = list(self.redact)
        return out


def build_owner_report(store: Store, options: OwnerOptions | None = None) -> dict[str, Any]:
    """The owner's report of everything in the store, as plain JSON-ready values."""
    options = options or OwnerOptions()
    q = _Queries(store, options)
    states = q.rollout_states
    candidates = [
        _candidate(q, options, key, base, states.get(key)) for key, base in q.base.items()
    ]
    latest = max(states.values(), key=lambda s: s["updated_at"]) if states else None
    return {
        "generated_at": options.now().isoformat(),
        "store": str(store.path),
        "options": options.as_json(),
        "candidates": candidates,
        "human_baseline": q.human_baseline(),
        "rollout": {"state": latest,
                    "timeline": q.timeline(latest["rollout"]) if latest else []},
        "legacy": build_report(store, now=options.now),
    }


def _candidate(q: _Queries, options: OwnerOptions, key: Key, base: dict[str, Any],
               state: dict[str, Any] | None) -> dict[str, Any]:
    compared, agreed = q.compared.get(key, (0, 0))
    agreement = {**_interval(agreed, compared), "n": compared, "agreed": agreed,
                 "method": "wilson"}
    segments = q.segments.get(key, [])
    latency = {**base["latency"], "histogram": q.histogram.get(key, [])}
    errors = {"rate": base["errors"] / base["predictions"], "count": base["errors"],
              "kinds": q.error_kinds.get(key, [])}
    cost = _cost(base, options.daily_volume)
    violations = _violations(q, options, key)
    report = {
        "name": key[0], "version": key[1],
        "agreement": agreement,
        "over_time": q.over_time.get(key, []),
        "segments": segments,
        "confusion": q.confusion.get(key),
        "fields": q.fields.get(key, []),
        "coverage": q.coverage.get(key),
        "latency": latency,
        "errors": errors,
        "violations": violations,
        "cost": cost,
        "disagreements": q.disagreements.get(key, []),
        "predictions": base["predictions"],
    }
    checks = _checks(options, agreement, errors, latency, cost, segments, state)
    if options.max_violation_rate is not None:
        checks.insert(3, _violation_check(violations, options.max_violation_rate))
    return {**report, "verdict": {"status": _status(checks), "checks": checks}}


# -- the verdict -------------------------------------------------------------


def _check(name: str, ok: bool | None, value: float | None, threshold: float | None,
           detail: str) -> dict[str, Any]:
    status = "unknown" if ok is None else "pass" if ok else "fail"
    return {"name": name, "status": status, "value": value, "threshold": threshold,
            "detail": detail}


def _checks(options: OwnerOptions, agreement: dict[str, Any], errors: dict[str, Any],
            latency: dict[str, Any], cost: dict[str, Any], segments: list[dict[str, Any]],
            state: dict[str, Any] | None) -> list[dict[str, Any]]:
    n, low = agreement["n"], agreement["low"]
    p95, budget = latency["p95"], options.max_p95_latency_ms
    below = [s for s in segments if s["below_floor"]]
    return [
        _check("sample size", n >= options.min_compared, n, options.min_compared,
               f"{n:,} compared with an outcome, {options.min_compared:,} needed"),
        _check("agreement", None if low is None else low >= options.threshold,
               agreement["rate"], options.threshold,
               "nothing compared yet" if low is None else
               f"95 % Wilson lower bound {low:.4f} against {options.threshold}"),
        _check("error rate", errors["rate"] <= options.max_error_rate, errors["rate"],
               options.max_error_rate, f"{errors['count']:,} errors"),
        _check("p95 latency", True if budget is None else None if p95 is None else p95 <= budget,
               p95, budget, "no budget" if budget is None else f"budget {budget:,} ms"),
        _check("cost per decision", True, cost["per_decision"], None,
               "informational" if cost["per_decision"] is not None else "no cost reported"),
        _check("segments below floor", not below, len(below), options.floor,
               ", ".join(f"{s['field']}={s['value']}" for s in below) or
               f"segments with at least {options.segment_min_samples:,} comparisons"),
        _rollout_check(state),
    ]


def _violation_check(violations: dict[str, Any], budget: float) -> dict[str, Any]:
    checked, violating, rate = violations["checked"], violations["violating"], violations["rate"]
    if rate is None:
        return _check("violation rate", None, None, budget, "no checked predictions yet")
    kinds = ", ".join(f"{k['check']} {k['predictions']:,}" for k in violations["kinds"][:3])
    return _check("violation rate", rate <= budget, rate, budget,
                  f"{violating:,} of {checked:,} checked outputs ({rate:.2%}) violated a hard "
                  f"constraint, budget {budget:.2%}" + (f"; most: {kinds}" if kinds else ""))


def _rollout_check(state: dict[str, Any] | None) -> dict[str, Any]:
    if state is None:
        return _check("rollout state", None, None, None, "no rollout")
    status = state["status"]
    return _check("rollout state", status not in ("rolled_back", "aborted"), state["percent"],
                  None, f"{state['rollout']}: {status} at step {state['step']} "
                        f"({state['percent']:g} %)")


def _status(checks: list[dict[str, Any]]) -> str:
    by_name = {c["name"]: c["status"] for c in checks}
    if by_name["sample size"] != "pass":
        return "not_enough_data"
    if "fail" in by_name.values() or by_name["agreement"] == "unknown":
        return "not_ready"
    return "ready"


# -- shaping -----------------------------------------------------------------


def _violations(q: _Queries, options: OwnerOptions, key: Key) -> dict[str, Any]:
    checked, violating = q.violation_counts.get(key, (0, 0))
    kinds = [{**kind, "rate": kind["predictions"] / checked}
             for kind in q.violation_kinds.get(key, [])]
    return {"checked": checked, "violating": violating,
            "rate": violating / checked if checked else None,
            "threshold": options.max_violation_rate, "kinds": kinds,
            "examples": q.violation_examples.get(key, [])}


def _interval(agreed: int, n: int) -> dict[str, float | None]:
    rate, low, high = wilson(agreed, n)
    return {"rate": rate, "low": low, "high": high}


def _cost(base: dict[str, Any], full: float | None) -> dict[str, Any]:
    per = base["cost"] / base["costed"] if base["costed"] else None
    span = max(base["span_seconds"] / 86_400.0, 1.0)
    current = base["predictions"] / span

    def day(volume: float | None) -> float | None:
        return None if per is None or volume is None else per * volume

    def month(volume: float | None) -> float | None:
        daily = day(volume)
        return None if daily is None else daily * DAYS_PER_MONTH

    return {
        "per_decision": per, "total": base["cost"] if base["costed"] else None,
        "daily_volume_current": current,
        "per_day_current": day(current), "per_month_current": month(current),
        "per_day_10x": day(current * 10), "per_month_10x": month(current * 10),
        "daily_volume_full": full, "per_day_full": day(full), "per_month_full": month(full),
    }


def _json_path(dotted: str | None) -> str:
    if dotted is None:
        return "$"
    return "$" + "".join('."' + part.replace('"', '\\"') + '"' for part in dotted.split("."))


def _label(column: str, path: str) -> str:
    return (f"CASE WHEN json_type({column}, '{path}') = 'VARCHAR' "
            f"THEN {column} ->> '{path}' END")


def _confusion(pairs: list[tuple[str | None, str | None, int]]) -> dict[str, Any] | None:
    labelled = [(h, a, n) for h, a, n in pairs if h is not None and a is not None]
    if not labelled:
        return None
    frequency: Counter[str] = Counter()
    for human, ai, n in labelled:
        frequency[human] += n
        frequency[ai] += n
    labels = sorted(frequency, key=lambda label: (-frequency[label], label))[:MAX_LABELS]
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    other = sum(n for h, a, n in pairs if h is None or a is None)
    for human, ai, n in labelled:
        if human in index and ai in index:
            matrix[index[human]][index[ai]] += n
        else:
            other += n
    return {"labels": labels, "matrix": matrix, "other": other}


def _histogram(counts: dict[int, int], top: float) -> list[dict[str, Any]]:
    if not counts:
        return []
    first, last = min(counts), max(counts)
    bounds = (*LATENCY_BOUNDS_MS, top)
    return [{"le_ms": bounds[i], "count": counts.get(i, 0)} for i in range(first, last + 1)]


# -- the queries ---------------------------------------------------------------

_SAME_PREDICTION = ("c.event_id = p.event_id AND c.candidate = p.candidate "
                    "AND c.version IS NOT DISTINCT FROM p.version")


class _Queries:
    """One query per section, each over all candidates, grouped by (candidate, version)."""

    def __init__(self, store: Store, options: OwnerOptions) -> None:
        self.store = store
        self.options = options

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self.store.db.execute(sql, list(params)).fetchall()

    @cached_property
    def base(self) -> dict[Key, dict[str, Any]]:
        rows = self._rows(
            "SELECT p.candidate, p.version, count(*), "
            "  count(*) FILTER (WHERE p.error_type IS NOT NULL), count(p.cost), "
            "  coalesce(sum(p.cost), 0), quantile_cont(p.latency_ms, [0.5, 0.95, 0.99]), "
            "  epoch(max(e.occurred_at)) - epoch(min(e.occurred_at)) "
            "FROM predictions p JOIN events e USING (event_id) "
            "GROUP BY ALL ORDER BY p.candidate, p.version NULLS FIRST")
        return {
            (c, v): {"predictions": n, "errors": failed, "costed": costed, "cost": cost,
                     "latency": dict(zip(("p50", "p95", "p99"), quantiles, strict=True)),
                     "span_seconds": span or 0.0}
            for c, v, n, failed, costed, cost, quantiles, span in rows
        }

    @cached_property
    def compared(self) -> dict[Key, tuple[int, int]]:
        rows = self._rows("SELECT candidate, version, count(*), count(*) FILTER (WHERE agree) "
                          "FROM comparisons GROUP BY ALL")
        return {(c, v): (n, a) for c, v, n, a in rows}

    @cached_property
    def over_time(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT c.candidate, c.version, CAST(e.occurred_at AS DATE) AS day, count(*), "
            "  count(*) FILTER (WHERE c.agree) "
            "FROM comparisons c JOIN events e USING (event_id) GROUP BY ALL ORDER BY day")
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for c, v, day, n, agreed in rows:
            out[(c, v)].append({"day": day.isoformat(), "compared": n, "agreed": agreed,
                                **_interval(agreed, n)})
        return out

    @cached_property
    def segments(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT c.candidate, c.version, s.field, s.value, count(*), "
            "  count(*) FILTER (WHERE c.agree) "
            "FROM comparisons c JOIN event_segments s USING (event_id) "
            "GROUP BY ALL ORDER BY s.field, s.value")
        floor, least = self.options.floor, self.options.segment_min_samples
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for c, v, name, value, n, agreed in rows:
            stats = _interval(agreed, n)
            out[(c, v)].append({
                "field": name, "value": value, "compared": n, "agreed": agreed, **stats,
                "floor": floor, "below_floor": n >= least and agreed / n < floor,
            })
        return out

    @cached_property
    def fields(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT candidate, version, field, count(*), count(*) FILTER (WHERE agree) "
            "FROM comparison_fields GROUP BY ALL ORDER BY field")
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for c, v, name, n, agreed in rows:
            out[(c, v)].append({"field": name, "compared": n, "agreed": agreed,
                                **_interval(agreed, n)})
        return out

    @cached_property
    def confusion(self) -> dict[Key, dict[str, Any] | None]:
        human = _label("o.outcome", _json_path(self.options.outcome_label))
        ai = _label("p.output", _json_path(self.options.prediction_label))
        rows = self._rows(
            f"SELECT c.candidate, c.version, {human}, {ai}, count(*) "  # noqa: S608
            "FROM comparisons c JOIN events e USING (event_id) "
            f"JOIN predictions p ON {_SAME_PREDICTION} "
            "JOIN outcomes o ON o.key = e.key AND o.decided_at = c.outcome_decided_at "
            "GROUP BY ALL")
        pairs: dict[Key, list[tuple[str | None, str | None, int]]] = defaultdict(list)
        for c, v, h, a, n in rows:
            pairs[(c, v)].append((h, a, n))
        return {key: _confusion(found) for key, found in pairs.items()}

    @cached_property
    def coverage(self) -> dict[Key, list[dict[str, Any]]]:
        columns = ", ".join(
            "count(*) FILTER (WHERE p.confidence >= ?), "
            "count(c.agree) FILTER (WHERE p.confidence >= ?), "
            "count(*) FILTER (WHERE c.agree AND p.confidence >= ?)"
            for _ in COVERAGE_THRESHOLDS)
        params = [t for t in COVERAGE_THRESHOLDS for _ in range(3)]
        rows = self._rows(
            f"SELECT p.candidate, p.version, count(*), {columns} "  # noqa: S608
            f"FROM predictions p LEFT JOIN comparisons c ON {_SAME_PREDICTION} "
            "GROUP BY ALL HAVING count(p.confidence) > 0", params)
        out: dict[Key, list[dict[str, Any]]] = {}
        for c, v, total, *counts in rows:
            out[(c, v)] = [
                {"threshold": t, "coverage": counts[3 * i] / total, "n": counts[3 * i + 1],
                 "agreed": counts[3 * i + 2],
                 "agreement": counts[3 * i + 2] / counts[3 * i + 1] if counts[3 * i + 1]
                 else None}
                for i, t in enumerate(COVERAGE_THRESHOLDS)
            ]
        return out

    @cached_property
    def histogram(self) -> dict[Key, list[dict[str, Any]]]:
        cases = " ".join(f"WHEN latency_ms <= {bound!r} THEN {i}"
                         for i, bound in enumerate(LATENCY_BOUNDS_MS))
        rows = self._rows(
            f"SELECT candidate, version, CASE {cases} ELSE {len(LATENCY_BOUNDS_MS)} END AS b, "  # noqa: S608
            "  count(*), max(latency_ms) FROM predictions GROUP BY ALL")
        counts: dict[Key, dict[int, int]] = defaultdict(dict)
        top: dict[Key, float] = {}
        for c, v, bucket, n, highest in rows:
            counts[(c, v)][bucket] = n
            top[(c, v)] = max(top.get((c, v), 0.0), highest)
        return {key: _histogram(found, top[key]) for key, found in counts.items()}

    @cached_property
    def error_kinds(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT candidate, version, error_type, count(*), min(error_message) "
            "FROM predictions WHERE error_type IS NOT NULL "
            "GROUP BY ALL ORDER BY count(*) DESC, error_type")
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for c, v, kind, n, example in rows:
            out[(c, v)].append({"kind": kind, "count": n, "example": example})
        return out

    @cached_property
    def disagreements(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT c.candidate, c.version, e.event_id, e.key, e.segment, e.payload, p.output, "
            "  o.outcome, c.outcome_decided_at "
            "FROM comparisons c JOIN events e USING (event_id) "
            f"JOIN predictions p ON {_SAME_PREDICTION} "
            "LEFT JOIN outcomes o ON o.key = e.key AND o.decided_at = c.outcome_decided_at "
            "WHERE NOT c.agree "
            "QUALIFY row_number() OVER (PARTITION BY c.candidate, c.version "
            "  ORDER BY e.occurred_at DESC, e.event_id DESC) <= ? "
            "ORDER BY e.occurred_at DESC, e.event_id DESC", [self.options.top_disagreements])
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        paths = self.options.redact
        for c, v, event_id, key, segment, payload, output, outcome, decided_at in rows:
            loaded = _loads(payload)
            out[(c, v)].append({
                "event_id": event_id, "key": key, "segment": _loads(segment),
                "payload": redact(loaded, paths),
                "output": redact_within(_loads(output), loaded, paths),
                "outcome": redact_within(_loads(outcome), loaded, paths),
                "decided_at": decided_at.isoformat(),
            })
        return out

    @cached_property
    def violation_counts(self) -> dict[Key, tuple[int, int]]:
        rows = self._rows(
            "SELECT candidate, version, count(*), count(*) FILTER (WHERE len(violations) > 0) "
            "FROM predictions WHERE error_type IS NULL GROUP BY ALL")
        return {(c, v): (checked, violating) for c, v, checked, violating in rows}

    @cached_property
    def violation_kinds(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT candidate, version, split_part(v, ' ', 1) AS check_name, "
            "  count(DISTINCT event_id) AS caught, count(*) "
            "FROM (SELECT candidate, version, event_id, unnest(violations) AS v "
            "  FROM predictions WHERE error_type IS NULL AND len(violations) > 0) "
            "GROUP BY ALL ORDER BY caught DESC, check_name")
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for c, v, check, caught, n in rows:
            out[(c, v)].append({"check": check, "predictions": caught, "count": n})
        return out

    @cached_property
    def violation_examples(self) -> dict[Key, list[dict[str, Any]]]:
        rows = self._rows(
            "SELECT p.candidate, p.version, e.event_id, e.key, e.occurred_at, p.violations, "
            "  e.payload "
            "FROM predictions p JOIN events e USING (event_id) "
            "WHERE p.error_type IS NULL AND len(p.violations) > 0 "
            "QUALIFY row_number() OVER (PARTITION BY p.candidate, p.version "
            "  ORDER BY e.occurred_at DESC, e.event_id DESC) <= ? "
            "ORDER BY e.occurred_at DESC, e.event_id DESC", [self.options.top_violations])
        paths = self.options.redact
        out: dict[Key, list[dict[str, Any]]] = defaultdict(list)
        for c, v, event_id, key, occurred_at, texts, payload in rows:
            shown = list(texts)
            if paths:
                loaded = _loads(payload)
                shown = [redact_text(text, loaded, paths) for text in shown]
            out[(c, v)].append({"event_id": event_id, "key": key,
                                "occurred_at": occurred_at.isoformat(), "violations": shown})
        return out

    def human_baseline(self) -> dict[str, Any] | None:
        ((keys, pairs, agreed),) = self._rows(
            "WITH known AS (SELECT key, actor, CAST(outcome AS VARCHAR) AS outcome, "
            "    lag(actor) OVER w AS previous_actor, "
            "    lag(CAST(outcome AS VARCHAR)) OVER w AS previous "
            "  FROM outcomes WHERE actor IS NOT NULL "
            "  WINDOW w AS (PARTITION BY key ORDER BY decided_at)) "
            "SELECT count(DISTINCT key), count(*), "
            "  count(*) FILTER (WHERE outcome IS NOT DISTINCT FROM previous) "
            "FROM known WHERE previous_actor IS NOT NULL AND previous_actor <> actor")
        if not keys:
            return None
        return {"keys": keys, "pairs": pairs, "agreed": agreed, **_interval(agreed, pairs)}

    @cached_property
    def rollout_states(self) -> dict[Key, dict[str, Any]]:
        rows = self._rows(
            "SELECT rollout, candidate, version, step, percent, status, step_started_at, "
            "  updated_at, revision FROM rollout_state "
            "QUALIFY row_number() OVER (PARTITION BY candidate, version "
            "  ORDER BY updated_at DESC, rollout) = 1")
        names = ("rollout", "candidate", "version", "step", "percent", "status",
                 "step_started_at", "updated_at", "revision")
        return {
            (r[1], r[2]): {name: value.isoformat() if isinstance(value, datetime) else value
                           for name, value in zip(names, r, strict=True)}
            for r in rows
        }

    def timeline(self, rollout: str) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT changed_at, actor, action, from_step, to_step, percent, to_status, reason "
            "FROM rollout_audit WHERE rollout = ? ORDER BY revision", [rollout])
        return [
            {"at": at.isoformat(), "actor": actor, "action": action, "from_step": before,
             "to_step": after, "percent": percent, "status": status, "reason": reason}
            for at, actor, action, before, after, percent, status, reason in rows
        ]


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)
