"""Metrics in the Prometheus text format, for the daemon's ``GET /metrics``.

Everything about the store is aggregated by DuckDB at scrape time, in one
read transaction on a connection of its own: the numbers are the store's own,
consistent with each other and with the report, and a restart does not reset
them. What the store does not hold (consumer lag, records handed out, the
scheduler's runs) lives in :class:`~shadow.service.runtime_metrics.RuntimeMetrics`,
which the daemon updates from its pipeline thread.

Counters are the store's row counts, so they only grow in normal operation,
with two exceptions Prometheus reads as a counter reset: a prediction made
again by ``--retry-errors`` moves from ``result="error"`` to another result,
and a comparison made again against a later outcome of its key can move from
one ``verdict`` to the other. Ratios of the raw values (agreement =
agree / all) are exact at every scrape; ``rate()`` of a single verdict is
approximate around such moves.

A version-less candidate has ``version=""``. Known label values (modes,
results, error kinds, verdicts, statuses, actions, phases) are always
present, at 0 when nothing has happened yet, so an alert on ``increase()``
sees the very first one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from rollout.gates import Phase
from rollout.state import Action, Status
from rollout.units import stored_label_delays
from shadow.core.errors import StoreError
from shadow.core.models import ErrorKind, Mode, RecordKind
from shadow.service.metric_families import counter, gauge, labelled
from shadow.service.runtime_metrics import RuntimeMetrics
from shadow.store.database import Store

log = structlog.get_logger(__name__)

LATENCY_BUCKETS_SECONDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                              2.5, 5.0, 10.0)
"""Upper bounds of the candidate latency histogram, in seconds (Prometheus' base unit; the
store keeps milliseconds); ``+Inf`` is implied."""

_RESULTS = ("ok", "error", "abstained")
_VERDICTS = ("agree", "disagree")
_CANDIDATE = ["candidate", "version"]


def render_metrics(store: Store, *, runtime: RuntimeMetrics | None = None) -> str:
    """The Prometheus text exposition of the store (and of this process, given ``runtime``).

    Never raises for an unreadable store: its metrics are left out and
    ``shadow_up`` is 0, so lag and job metrics still reach the scraper when
    they matter most.
    """
    families: list[Metric] = []
    try:
        families.extend(_store_families(store))
        up = 1.0
    except (duckdb.Error, StoreError) as exc:
        log.warning("metrics: the store cannot be read", store=str(store.path), error=str(exc))
        up = 0.0
    families.append(gauge("shadow_up", "1 when the store was read for this scrape, else 0.", up))
    if runtime is not None:
        families.extend(runtime.collect())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(families))
    if runtime is not None:
        ProcessCollector(registry=registry)  # CPU, memory, open files of the daemon
    return generate_latest(registry).decode()


class _Collected:
    """Families computed before the registry asks; ``describe`` lets it refuse clashes."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def describe(self) -> list[Metric]:
        return self._families

    def collect(self) -> list[Metric]:
        return self._families


# -- the store ----------------------------------------------------------------------


def _store_families(store: Store) -> list[Metric]:
    """Every store-derived family, read in one transaction on a cursor of its own.

    Raises:
        StoreError: the store is not open.
        duckdb.Error: DuckDB refused a query.
    """
    db = store.cursor()
    try:
        db.execute("BEGIN TRANSACTION")  # one snapshot: the families agree with each other
        families = [
            *_intake(db),
            *_predictions(db),
            *_comparisons(db),
            *_rollouts(db),
            *_gates(db),
            *_tiers(db),
        ]
        db.execute("COMMIT")
        return families
    finally:
        db.close()


def _intake(db: duckdb.DuckDBPyConnection) -> list[Metric]:
    ((events, duplicates, outcomes),) = db.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM duplicates), "
        "(SELECT count(*) FROM outcomes)").fetchall()
    dead = CounterMetricFamily(
        "shadow_dead_letters", "Records that could not become an event or outcome, by kind.",
        labels=["kind"])
    rows = db.execute(
        "SELECT k.kind, count(d.kind) FROM (SELECT unnest(?::VARCHAR[]) AS kind "
        "UNION SELECT DISTINCT kind FROM dead_letters) k "
        "LEFT JOIN dead_letters d USING (kind) GROUP BY k.kind ORDER BY k.kind",
        [[k.value for k in RecordKind]]).fetchall()
    for kind, n in rows:
        dead.add_metric([kind], n)
    return [
        counter("shadow_events", "Events stored (each event_id once).", events),
        counter("shadow_duplicates",
                 "Records whose event_id was already stored from another position.", duplicates),
        dead,
        counter("shadow_outcomes", "Outcomes stored, history included (each key and "
                 "decided_at once).", outcomes),
    ]


def _tiers(db: duckdb.DuckDBPyConnection) -> list[Metric]:
    """Predictions by tier, reviews by status, and the reviewed actions published."""
    tiers = db.execute(
        "SELECT candidate, coalesce(version, ''), tier, mode, count(*) FROM predictions "
        "WHERE tier IS NOT NULL GROUP BY ALL").fetchall()
    reviews = db.execute(
        "SELECT candidate, coalesce(version, ''), status, count(*) FROM reviews "
        "GROUP BY ALL").fetchall()
    published = db.execute(
        "SELECT r.candidate, coalesce(r.version, ''), v.verdict, count(*) "
        "FROM review_verdicts v JOIN reviews r USING (review_id) "
        "WHERE v.published_at IS NOT NULL GROUP BY ALL").fetchall()
    return [
        labelled(GaugeMetricFamily, "shadow_tier_predictions",
                 "Predictions of a rolled-out candidate by the tier its policy gave them, "
                 "live or shadow.", ["candidate", "version", "tier", "mode"],
                 (([c, v, t, m], n) for c, v, t, m, n in tiers)),
        labelled(GaugeMetricFamily, "shadow_reviews",
                 "Proposals of tier review by status (open, approved, edited, rejected, "
                 "withdrawn).", ["candidate", "version", "status"],
                 (([c, v, st], n) for c, v, st, n in reviews)),
        labelled(CounterMetricFamily, "shadow_reviewed_actions_published",
                 "Approved and edited proposals published to the action sink.",
                 ["candidate", "version", "verdict"],
                 (([c, v, verdict], n) for c, v, verdict, n in published)),
    ]


def _latency_buckets_sql() -> str:
    return ", ".join(
        f"count(*) FILTER (WHERE error_type IS NULL AND latency_ms / 1000.0 <= {bound!r})"
        for bound in LATENCY_BUCKETS_SECONDS)


_PER_CANDIDATE = f"""
SELECT candidate, coalesce(version, ''),
       count(*) FILTER (WHERE error_type IS NULL),
       coalesce(sum(latency_ms / 1000.0) FILTER (WHERE error_type IS NULL), 0),
       coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
       coalesce(sum(cost), 0),
       count(*) FILTER (WHERE mode = 'live' AND published_at IS NOT NULL),
       count(*) FILTER (WHERE mode = 'live' AND published_at IS NULL AND withdrawn_at IS NULL
                        AND error_type IS NULL AND NOT abstained AND violations IS NULL),
       count(*) FILTER (WHERE withdrawn_at IS NOT NULL),
       {_latency_buckets_sql()}
FROM predictions
GROUP BY ALL ORDER BY 1, 2
"""  # noqa: S608 - constant SQL

_BY_RESULT = """
WITH counted AS (
    SELECT candidate, coalesce(version, '') AS version, mode,
           CASE WHEN error_type IS NOT NULL THEN 'error'
                WHEN abstained THEN 'abstained' ELSE 'ok' END AS result,
           count(*) AS n
    FROM predictions GROUP BY ALL
),
candidates AS (SELECT DISTINCT candidate, version FROM counted),
modes AS (SELECT unnest($modes::VARCHAR[]) AS mode UNION SELECT DISTINCT mode FROM counted),
results AS (SELECT unnest($results::VARCHAR[]) AS result)
SELECT c.candidate, c.version, m.mode, r.result, coalesce(n.n, 0)
FROM candidates c CROSS JOIN modes m CROSS JOIN results r
LEFT JOIN counted n ON n.candidate = c.candidate AND n.version = c.version
    AND n.mode = m.mode AND n.result = r.result
ORDER BY ALL
"""

_BY_ERROR_KIND = """
WITH candidates AS (SELECT DISTINCT candidate, coalesce(version, '') AS version FROM predictions),
counted AS (
    SELECT candidate, coalesce(version, '') AS version,
           coalesce(error_kind, 'unknown') AS kind, count(*) AS n
    FROM predictions WHERE error_type IS NOT NULL GROUP BY ALL
),
kinds AS (SELECT unnest($kinds::VARCHAR[]) AS kind UNION SELECT DISTINCT kind FROM counted)
SELECT c.candidate, c.version, k.kind, coalesce(n.n, 0)
FROM candidates c CROSS JOIN kinds k
LEFT JOIN counted n ON n.candidate = c.candidate AND n.version = c.version AND n.kind = k.kind
ORDER BY ALL
"""


_BY_CHECK = """
SELECT candidate, coalesce(version, ''), split_part(v, ' ', 1), count(*)
FROM (SELECT candidate, version, unnest(violations) AS v FROM predictions
      WHERE violations IS NOT NULL)
GROUP BY ALL ORDER BY ALL
"""


def _predictions(db: duckdb.DuckDBPyConnection) -> list[Metric]:
    predictions = CounterMetricFamily(
        "shadow_predictions", "Predictions stored, by mode and result (ok, error, abstained).",
        labels=[*_CANDIDATE, "mode", "result"])
    for *labels, n in db.execute(_BY_RESULT, {"modes": [m.value for m in Mode],
                                              "results": list(_RESULTS)}).fetchall():
        predictions.add_metric(labels, n)
    errors = CounterMetricFamily(
        "shadow_prediction_errors", "Predictions that ended in an error, by kind.",
        labels=[*_CANDIDATE, "kind"])
    for *labels, n in db.execute(_BY_ERROR_KIND, {"kinds": [k.value for k in ErrorKind]}) \
            .fetchall():
        errors.add_metric(labels, n)
    violations = CounterMetricFamily(
        "shadow_prediction_violations",
        "Hard-constraint violations of stored predictions, by check.",
        labels=[*_CANDIDATE, "check"])
    for *labels, n in db.execute(_BY_CHECK).fetchall():
        violations.add_metric(labels, n)
    return [predictions, errors, violations,
            *_per_candidate(db.execute(_PER_CANDIDATE).fetchall())]


def _per_candidate(rows: Sequence[tuple[Any, ...]]) -> list[Metric]:
    latency = HistogramMetricFamily(
        "shadow_prediction_latency_seconds",
        "Latency of the candidate's successful predictions (abstentions included), in seconds.",
        labels=_CANDIDATE)
    tokens = CounterMetricFamily("shadow_tokens", "Tokens the candidate's calls used.",
                                 labels=[*_CANDIDATE, "kind"])
    cost = CounterMetricFamily("shadow_cost", "What the candidate's calls cost, in the unit "
                               "of the configured prices.", labels=_CANDIDATE)
    published = CounterMetricFamily(
        "shadow_live_decisions_published", "Live decisions published to the sink.",
        labels=_CANDIDATE)
    pending = GaugeMetricFamily(
        "shadow_live_decisions_pending",
        "Live decisions (successful, not abstained, no violation) not yet published to "
        "the sink.",
        labels=_CANDIDATE)
    withdrawn = CounterMetricFamily(
        "shadow_live_decisions_withdrawn", "Live decisions never published: the rollout "
        "stopped acting, or they waited longer than max_decision_age.", labels=_CANDIDATE)
    for (name, version, ok, latency_sum, prompt, completion, spent, sent, waiting, dropped,
         *le) in rows:
        labels = [name, version]
        buckets = [(_bound(b), n) for b, n in zip(LATENCY_BUCKETS_SECONDS, le, strict=True)]
        latency.add_metric(labels, [*buckets, ("+Inf", ok)], latency_sum)
        tokens.add_metric([*labels, "prompt"], prompt)
        tokens.add_metric([*labels, "completion"], completion)
        cost.add_metric(labels, spent)
        published.add_metric(labels, sent)
        pending.add_metric(labels, waiting)
        withdrawn.add_metric(labels, dropped)
    return [latency, tokens, cost, published, pending, withdrawn]


def _bound(value: float) -> str:
    return repr(float(value))


def _comparisons(db: duckdb.DuckDBPyConnection) -> list[Metric]:
    compared = CounterMetricFamily(
        "shadow_comparisons",
        "Predictions compared with the final outcome of their key, by verdict.",
        labels=[*_CANDIDATE, "comparator", "verdict"])
    rows = db.execute(
        "SELECT candidate, coalesce(version, ''), comparator, count(*) FILTER (WHERE agree), "
        "count(*) FILTER (WHERE NOT agree) FROM comparisons GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    for name, version, comparator, *counts in rows:
        for verdict, n in zip(_VERDICTS, counts, strict=True):
            compared.add_metric([name, version, comparator, verdict], n)
    return [compared]


# -- the rollout ----------------------------------------------------------------------


def _rollouts(db: duckdb.DuckDBPyConnection) -> list[Metric]:
    info = GaugeMetricFamily("shadow_rollout_info", "The candidate each rollout rolls out.",
                             labels=["rollout", *_CANDIDATE])
    share = GaugeMetricFamily(
        "shadow_rollout_traffic_ratio", "Share of routable traffic the AI acts on, 0 to 1 "
        "(the step's percent / 100).", labels=["rollout"])
    step = GaugeMetricFamily("shadow_rollout_step", "The rollout's current step (0 is the "
                             "first).", labels=["rollout"])
    status = GaugeMetricFamily("shadow_rollout_status", "1 for the rollout's current status, "
                               "0 for the others.", labels=["rollout", "status"])
    rows = db.execute(
        "SELECT rollout, candidate, coalesce(version, ''), step, percent, status "
        "FROM rollout_state ORDER BY rollout").fetchall()
    for rollout, candidate, version, at, percent, current in rows:
        info.add_metric([rollout, candidate, version], 1)
        share.add_metric([rollout], percent / 100.0)
        step.add_metric([rollout], at)
        for s in Status:
            status.add_metric([rollout, s.value], float(s.value == current))
    transitions = CounterMetricFamily(
        "shadow_rollout_transitions", "Audited transitions of the rollout, by action.",
        labels=["rollout", "action"])
    rows = db.execute(
        "WITH actions AS (SELECT unnest(?::VARCHAR[]) AS action UNION "
        "                 SELECT DISTINCT action FROM rollout_audit), "
        "     rollouts AS (SELECT DISTINCT rollout FROM rollout_audit) "
        "SELECT r.rollout, a.action, count(t.action) FROM rollouts r CROSS JOIN actions a "
        "LEFT JOIN rollout_audit t ON t.rollout = r.rollout AND t.action = a.action "
        "GROUP BY ALL ORDER BY ALL", [[a.value for a in Action]]).fetchall()
    for rollout, action, n in rows:
        transitions.add_metric([rollout, action], n)
    return [info, share, step, status, transitions, _label_delays(db)]


def _label_delays(db: duckdb.DuckDBPyConnection) -> Metric:
    """How long the current step's keys waited for their first label, by verdict: a
    disagreement labelled later than an agreement is the bias the label window handles.

    A summary (its ``quantile`` label is only allowed on one) without ``_sum``: the store
    keeps the quantiles and the count, not the total."""
    delays = Metric("shadow_rollout_label_delay_seconds", "Data time from a key's first "
                    "event of the step to its first label's decision, by verdict (median and "
                    "95th percentile, and the keys labelled).", "summary")
    for rollout, found in stored_label_delays(db).items():
        for d in found:
            labels = {"rollout": rollout, "verdict": "agree" if d.agreed else "disagree"}
            delays.add_sample(delays.name, {**labels, "quantile": "0.5"},
                              d.median.total_seconds())
            delays.add_sample(delays.name, {**labels, "quantile": "0.95"},
                              d.p95.total_seconds())
            delays.add_sample(delays.name + "_count", labels, d.labelled)
    return delays


_LATEST_EVALUATIONS = """
WITH latest AS (
    SELECT rollout, kind, phase, evaluated_at, evidence FROM gate_evaluations
    QUALIFY row_number() OVER (PARTITION BY rollout, kind
                               ORDER BY evaluated_at DESC, rowid DESC) = 1
)
"""

_CHECK_SCHEMA = ('[{"name": "VARCHAR", "phase": "VARCHAR", "value": "DOUBLE", '
                 '"threshold": "DOUBLE", "low": "DOUBLE", "high": "DOUBLE", "n": "BIGINT"}]')

_CHECKS = _LATEST_EVALUATIONS + f"""
, checks AS (
    SELECT rollout, kind,
           unnest(from_json(evidence -> '$.checks', '{_CHECK_SCHEMA}'), recursive := true)
    FROM latest
)
SELECT rollout, kind, name, phase, value, threshold, low, high, n FROM checks
QUALIFY row_number() OVER (PARTITION BY rollout, kind, name) = 1
ORDER BY rollout, kind, name
"""  # noqa: S608 - constant SQL

# What each check reports, by the name of its field in the evidence.
_CHECK_GAUGES = {
    # Each check's own unit, as configured (latency in ms, as max_p95_latency_ms): the
    # value is compared with its threshold, which the same series family shows.
    "value": ("shadow_gate_value", "The measured value of each check of the latest gate "
              "evaluation, in the unit of its threshold (a rate, a count, seconds of dwell "
              "or ms of latency)."),
    "threshold": ("shadow_gate_threshold", "The threshold each check was held to."),
    "low": ("shadow_gate_low", "Lower end of the check's confidence sequence."),
    "high": ("shadow_gate_high", "Upper end of the check's confidence sequence."),
    "n": ("shadow_gate_samples", "The samples each check was decided on."),
}


def _gates(db: duckdb.DuckDBPyConnection) -> list[Metric]:
    labels = ["rollout", "kind"]
    phase = GaugeMetricFamily(
        "shadow_gate_phase", "1 for the phase of the latest gate evaluation of each kind "
        "(promotion, rollback), 0 for the others.", labels=[*labels, "phase"])
    evaluated = GaugeMetricFamily(
        "shadow_gate_evaluated_timestamp_seconds", "When the latest evaluation was made.",
        labels=labels)
    for rollout, kind, current, at in db.execute(
            _LATEST_EVALUATIONS  # noqa: S608 - constant SQL
            + "SELECT rollout, kind, phase, epoch(evaluated_at) FROM latest ORDER BY ALL"
    ).fetchall():
        _state_set(phase, [rollout, kind], current)
        evaluated.add_metric([rollout, kind], at)
    check_labels = [*labels, "check"]
    check_phase = GaugeMetricFamily(
        "shadow_gate_check_phase", "1 for the phase of each check of the latest evaluation, "
        "0 for the others.", labels=[*check_labels, "phase"])
    gauges = {field: GaugeMetricFamily(name, doc, labels=check_labels)
              for field, (name, doc) in _CHECK_GAUGES.items()}
    for rollout, kind, name, current, *values in db.execute(_CHECKS).fetchall():
        _state_set(check_phase, [rollout, kind, name], current)
        for family, value in zip(gauges.values(), values, strict=True):
            if value is not None:
                family.add_metric([rollout, kind, name], value)
    return [phase, evaluated, check_phase, *gauges.values()]


def _state_set(family: GaugeMetricFamily, labels: list[str], current: str) -> None:
    for p in Phase:
        family.add_metric([*labels, p.value], float(p.value == current))
