"""The owner's report: is each candidate ready, and the evidence behind the answer.

All aggregation happens in DuckDB SQL, one query per section for all
candidates at once; Python only shapes the few result rows (at most a few
hundred per candidate). Its JSON is a contract that the HTML and
Markdown renderings read (as :class:`shadow.reports.owner_model.OwnerReport`, whose
fields are these keys)::

    {"generated_at", "store", "options",
     "candidates": [{"name", "version", "verdict", "agreement", "over_time",
                     "segments", "confusion", "fields", "coverage", "latency",
                     "errors", "violations", "cost", "disagreements", "tools",
                     "tiers"}],
     "human_baseline", "rollout"}

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
- ``disagreements[*].note`` is the comparator's note (a similarity score, a
  judge's reason), ``None`` when it gave none.
- ``redact`` paths are dotted and relative to the payload (``requester.email``
  means ``payload["requester"]["email"]``); through a list the path applies to
  every element. Only ``disagreements[*].payload`` carries payloads.
- ``violations`` counts hard-constraint violations (``shadow.candidates.constraints``) of
  the predictions that were checked, i.e. did not error. ``rate`` is violating
  predictions over checked ones; each of ``kinds`` is one check (the first word
  of a violation text) with the predictions it caught (``predictions``, and
  their share of the checked ones) and its violation texts (``count``).
  ``examples`` are the most recent violating predictions with their texts, no
  payload and no output; a text that quotes a value found at a ``redact`` path
  of its event's payload has that value replaced by ``[redacted]``.
- ``tools`` (only when an ``actions`` comparator judged the candidate) counts, per tool,
  the AI's proposed actions and the person's over the compared predictions; in each, the
  smaller count of the two is ``matched``, ``precision`` is matched over proposed and
  ``recall`` matched over taken. ``argument_agreement`` is the share of the comparator's
  ``tool.argument`` verdicts that agreed. ``extra`` and ``missed`` are the most recent
  actions left unpaired once actions with equal arguments are paired (then the rest in
  order), at most five each (and no more than ``top_disagreements``), arguments redacted
  like a disagreement's output.
- ``tiers`` (only for a candidate with a tier policy, ``rollout.tiers``, once the rollout
  has given its predictions a tier; every candidate with tiers when the report is made
  without the configuration) counts the predictions given a tier (``assessed``, ``live``,
  ``shadow``: what shadow would have done; ``unassessed`` are left out of every figure).
  ``tiers.tiers`` holds ``auto``, ``review`` and ``human`` in that order, each with
  ``predictions``, ``live``, ``shadow``, ``share`` (of all assessed), ``live_share`` and
  ``shadow_share`` (of the assessed live, shadow ones), ``agreement`` (its comparisons with
  the person's outcome, Wilson; a reviewer's approve or edit is an outcome too, source
  ``review``, decided with the proposal in view) and ``rules`` (what chose the tier: ``rules[i]``,
  ``default``, ``error``, ``abstained``, ``violation``, with ``predictions`` and ``text``:
  the configured rule as people read it, or the reason; ``None`` when not known).
  ``tiers.reviews`` counts the proposals of tier review: ``proposed`` (live and shadow,
  withdrawn included), ``live``, ``shadow``, ``published`` (live ones the review sink
  received), ``withdrawn``, ``open`` (live, not withdrawn, without a verdict) and
  ``decided`` (with a verdict); ``verdicts`` are ``approve``, ``edit``, ``reject`` with
  ``count`` and their share of ``decided`` (Wilson); ``median_seconds`` and
  ``p90_seconds`` (``quantile_cont``) are the time to review, a verdict's ``decided_at``
  minus the proposal's ``published_at``, else its ``proposed_at``. ``tiers.work`` is the
  work taken off people's hands at ``handling_minutes_per_case`` and
  ``review_minutes_per_case`` (``report:`` keys): a case in tier auto saves the first, one
  in review the first less the second, one in human nothing. ``auto_share`` is tier auto
  over all assessed predictions, ``live_auto_share`` over the live ones;
  ``minutes_saved_live`` is over the assessed live decisions, ``minutes_saved_per_case``
  the mean over all assessed ones. The projections use the cost projection's basis (the
  span of the candidate's events in days, at least one; 30-day months):
  ``per_day_current``/``per_month_current`` at the current live traffic
  (``daily_volume_live``, assessed live decisions per day), ``per_day_all_live``/
  ``per_month_all_live`` with every prediction of current traffic live
  (``daily_volume_current``, as the cost's), ``per_day_full``/``per_month_full`` at
  ``daily_volume_full`` (``report.daily_volume``), all in minutes.
- The human baseline looks at keys with outcomes from more than one distinct
  actor: each outcome whose previous outcome (by ``decided_at``) came from a
  different actor makes a pair, agreeing when the two are the same JSON text.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shadow.core.fixed_sample import wilson
from shadow.reports.options import OwnerOptions
from shadow.reports.owner_model import (
    Check,
    CheckKind,
    Completeness,
    CostProjection,
    ErrorKind,
    Errors,
    FieldRate,
    OwnerAgreement,
    OwnerCandidate,
    OwnerLatency,
    OwnerReport,
    RolloutSection,
    RolloutState,
    Segment,
    Verdict,
    Violations,
)
from shadow.reports.owner_queries import OwnerQueries
from shadow.reports.owner_tiers import tier_section
from shadow.reports.queries import Compared, Key, Totals
from shadow.reports.verdict import NA, headline, limit, percent
from shadow.store.database import Store

DAYS_PER_MONTH = 30


def owner_report(store: Store, options: OwnerOptions | None = None, *,
                 queries: OwnerQueries | None = None) -> OwnerReport:
    """The owner's report of everything in the store; read from ``queries`` when given
    (shared with the core report by ``shadow.reports.build.full_report``).

    Raises:
        ValueError: ``queries`` were made with other options than ``options``.
    """
    if queries is not None and options is not None and queries.options != options:
        raise ValueError("owner_report: the queries were made with other options")
    q = queries if queries is not None else OwnerQueries(store, options or OwnerOptions())
    options = q.options
    states = q.rollout_states
    candidates = tuple(
        _candidate(q, options, key, totals, states.get(key)) for key, totals in q.totals.items()
    )
    latest = max(states.values(), key=lambda s: s.updated_at) if states else None
    return OwnerReport(
        generated_at=options.now(),
        store=str(store.path),
        options=options,
        candidates=candidates,
        human_baseline=q.human_baseline(),
        rollout=RolloutSection(
            state=latest,
            timeline=q.timeline(latest.rollout) if latest else (),
            labels=q.label_delays(latest.rollout) if latest else None,
            withdrawn=q.withdrawn()),
        completeness=_completeness(q),
    )


def build_owner_report(store: Store, options: OwnerOptions | None = None) -> dict[str, Any]:
    """:func:`owner_report` as plain JSON-ready values, for callers that want the JSON."""
    return owner_report(store, options).as_dict()


def _candidate(q: OwnerQueries, options: OwnerOptions, key: Key, totals: Totals,
               state: RolloutState | None) -> OwnerCandidate:
    counted = q.compared.get(key, Compared(0, 0, ()))
    compared, agreed = counted.compared, counted.agreed
    agreement = OwnerAgreement(*wilson(agreed, compared), n=compared, agreed=agreed)
    segments = _segments(q, options, key)
    # A candidate whose every call failed was never timed doing its work: no latency.
    latency = (OwnerLatency(None, None, None, ()) if totals.errors == totals.predictions else
               OwnerLatency(totals.p50, totals.p95, totals.p99, q.histogram.get(key, ())))
    errors = Errors(rate=totals.errors / totals.predictions, count=totals.errors,
                    kinds=tuple(ErrorKind(k.kind, k.count, k.example)
                                for k in q.error_kinds.get(key, [])))
    cost = _cost(totals, options.daily_volume)
    violations = _violations(q, options, key)
    checks = _checks(options, agreement, errors, latency, cost, segments, state)
    if options.max_violation_rate is not None:
        checks.insert(3, _violation_check(violations, options.max_violation_rate))
    status = _status(checks, errors, totals.predictions, options.min_compared)
    candidate = OwnerCandidate(
        name=key[0], version=key[1],
        agreement=agreement,
        over_time=tuple(q.over_time.get(key, [])),
        segments=segments,
        confusion=q.confusion.get(key),
        fields=tuple(FieldRate(f.field, f.compared, f.agreed, *wilson(f.agreed, f.compared))
                     for f in q.fields.get(key, [])),
        coverage=q.coverage.get(key),
        latency=latency,
        errors=errors,
        violations=violations,
        cost=cost,
        disagreements=tuple(q.disagreements.get(key, [])),
        predictions=totals.predictions,
        verdict=Verdict(status, tuple(checks)),
        pending=totals.predictions - totals.errors - totals.abstained - compared,
        tools=tuple(q.tools.get(key, [])),
        tiers=tier_section(q.tier_queries, options, key, totals),
    )
    line, next_step = headline(candidate)
    return replace(candidate, verdict=replace(candidate.verdict, line=line, next_step=next_step))


# -- the verdict -------------------------------------------------------------


def _check(name: str, ok: bool | None, value: float | None, threshold: float | None,
           detail: str, unit: str = "") -> Check:
    status = NA if ok is None else "pass" if ok else "fail"
    return Check(name, status, value, threshold, detail, unit)


def _checks(options: OwnerOptions, agreement: OwnerAgreement, errors: Errors,
            latency: OwnerLatency, cost: CostProjection, segments: tuple[Segment, ...],
            state: RolloutState | None) -> list[Check]:
    n, low = agreement.n, agreement.low
    p95, budget = latency.p95, options.max_p95_latency_ms
    least = options.segment_min_samples
    judged = [s for s in segments if s.compared >= least]
    below = [s for s in judged if s.below_floor]
    return [
        _check("sample size", n >= options.min_compared, n, options.min_compared,
               f"{n:,} compared with an outcome, {options.min_compared:,} needed", "count"),
        _check("agreement", None if low is None else low >= options.threshold,
               agreement.rate, options.threshold,
               "nothing compared yet" if low is None else
               f"Wilson 95 % lower bound {percent(low)} against {limit(options.threshold)}",
               "rate"),
        _check("error rate", errors.rate <= options.max_error_rate, errors.rate,
               options.max_error_rate, f"{errors.count:,} errors", "rate"),
        _check("p95 latency", None if budget is None or p95 is None else p95 <= budget,
               p95, budget,
               "no budget set" if budget is None else
               "no successful call was timed" if p95 is None else f"budget {budget:,} ms", "ms"),
        _check("cost per decision", None, cost.per_decision, None,
               "no cost reported" if cost.per_decision is None else
               "informational: no budget", "money"),
        _check("segments below floor", not below if judged else None, len(below), options.floor,
               ", ".join(f"{s.field}={s.value} {percent(s.rate)} (n={s.compared:,})"
                         for s in below) or
               (f"{len(judged):,} segments with at least {least:,} comparisons" if judged else
                f"no segment has {least:,} comparisons yet"), "segments"),
        _rollout_check(state),
    ]


def _violation_check(violations: Violations, budget: float) -> Check:
    checked, violating, rate = violations.checked, violations.violating, violations.rate
    if rate is None:
        return _check("violation rate", None, None, budget, "no checked predictions yet",
                      "rate")
    kinds = ", ".join(f"{k.check} {k.predictions:,}" for k in violations.kinds[:3])
    return _check("violation rate", rate <= budget, rate, budget,
                  f"{violating:,} of {checked:,} checked outputs ({rate:.2%}) violated a hard "
                  f"constraint, budget {budget:.2%}" + (f"; most: {kinds}" if kinds else ""),
                  "rate")


def _rollout_check(state: RolloutState | None) -> Check:
    if state is None:
        return _check("rollout state", None, None, None, "no rollout configured")
    return _check("rollout state", state.status not in ("rolled_back", "aborted"),
                  state.percent, None,
                  f"{state.rollout}: {state.status} at step {state.step} ({state.percent:g} %)",
                  "percent")


def _status(checks: list[Check], errors: Errors, predictions: int, min_compared: int) -> str:
    """Too few comparisons is "not enough data", unless the error rate already decides: a
    candidate whose every prediction failed, or that failed over budget on at least
    ``min_compared`` predictions, is not ready however few were compared."""
    by_name = {c.name: c.status for c in checks}
    if by_name["sample size"] != "pass":
        decided = by_name["error rate"] == "fail" and (
            errors.count == predictions or predictions >= min_compared)
        return "not_ready" if decided else "not_enough_data"
    if "fail" in by_name.values() or by_name["agreement"] == NA:
        return "not_ready"
    return "ready"


# -- shaping -----------------------------------------------------------------


def _completeness(q: OwnerQueries) -> Completeness:
    counts, (first, last) = q.counts, q.window
    return Completeness(
        first_event=None if first is None else first.isoformat(),
        last_event=None if last is None else last.isoformat(),
        events=counts.events, duplicates=counts.duplicates,
        dead_letters=counts.event_dead_letters, outcomes=counts.outcomes,
        outcome_dead_letters=counts.outcome_dead_letters)


def _segments(q: OwnerQueries, options: OwnerOptions, key: Key) -> tuple[Segment, ...]:
    floor, least = options.floor, options.segment_min_samples
    return tuple(Segment(s.field, s.value, s.compared, s.agreed, *wilson(s.agreed, s.compared),
                         floor=floor,
                         below_floor=s.compared >= least and s.agreed / s.compared < floor)
                 for s in q.segments.get(key, []))


def _violations(q: OwnerQueries, options: OwnerOptions, key: Key) -> Violations:
    checked, violating = q.violation_counts.get(key, (0, 0))
    kinds = tuple(CheckKind(check, caught, n, caught / checked)
                  for check, caught, n in q.violation_kinds.get(key, []))
    configured = None if options.checked is None else key[0] in options.checked
    return Violations(configured=configured, checked=checked, violating=violating,
                      rate=violating / checked if checked else None,
                      threshold=options.max_violation_rate, kinds=kinds,
                      examples=tuple(q.violation_examples.get(key, [])))


def _cost(totals: Totals, full: float | None) -> CostProjection:
    total = totals.cost if totals.costed else None
    per = None if total is None else total / totals.costed
    span = max(totals.span_seconds / 86_400.0, 1.0)
    current = totals.predictions / span

    def day(volume: float | None) -> float | None:
        return None if per is None or volume is None else per * volume

    def month(volume: float | None) -> float | None:
        daily = day(volume)
        return None if daily is None else daily * DAYS_PER_MONTH

    return CostProjection(
        per_decision=per, total=total, daily_volume_current=current,
        per_day_current=day(current), per_month_current=month(current),
        per_day_10x=day(current * 10), per_month_10x=month(current * 10),
        daily_volume_full=full, per_day_full=day(full), per_month_full=month(full))
