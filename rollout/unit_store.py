"""How the rollout's units are read from and written to the store.

The SQL behind :class:`rollout.units.Units`: the rows that are new since the
last sync (read by time range, which DuckDB's zone maps skip to), the events
behind them, and the append-only tables a restarted controller rebuilds its
ledger from (``rollout_units``, ``rollout_labels``, ``rollout_progress``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa

from rollout.ledger import Segment, UnitRow
from rollout.statistics import DetectorState

NEW_PREDICTIONS = """
SELECT event_id, mode = 'shadow' OR review, predicted_at, error_type IS NOT NULL, abstained,
       violations IS NOT NULL, latency_ms
FROM predictions
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
  AND predicted_at >= $since
ORDER BY predicted_at, event_id
"""

NEW_COMPARISONS = """
SELECT event_id, agree, outcome_decided_at, compared_at
FROM comparisons
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
  AND comparator = $comparator AND compared_at >= $since
ORDER BY compared_at, event_id
"""

EVENTS = """
SELECT event_id, key, occurred_at, segment::VARCHAR FROM events
WHERE event_id IN (SELECT unnest($ids))
"""

STEP_EVENTS = """
SELECT e.event_id, e.key, e.occurred_at, e.segment::VARCHAR
FROM predictions p JOIN events e USING (event_id)
WHERE p.candidate = $candidate AND p.version IS NOT DISTINCT FROM $version
  AND p.predicted_at >= $since AND p.error_type IS NULL AND NOT p.abstained
"""

SOURCES = """
SELECT key, decided_at, any_value(source) FROM outcomes
WHERE key IN (SELECT unnest($keys)) GROUP BY ALL
"""

TALLY = """
SELECT count(*), count(error_type), count(*) FILTER (abstained), count(violations)
FROM predictions
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
  AND predicted_at >= $since AND predicted_at <= $through
"""

LATENCY_BINS = """
SELECT CASE WHEN latency_ms <= $floor THEN 0
            ELSE 1 + floor(ln(latency_ms / $floor) / ln(1.002))::BIGINT END, count(*)
FROM predictions
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
  AND predicted_at >= $since AND predicted_at <= $through AND error_type IS NULL
GROUP BY 1
"""

AT_BOUNDARY = """
SELECT event_id FROM {table}
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version {extra}
  AND {column} = $at
"""

STORED_UNITS = """
SELECT key, event_id, epoch(occurred_at), shadow, eligible, segments
FROM rollout_units WHERE rollout = $rollout ORDER BY seq
"""

STORED_FIRST_UNITS = """
WITH labels AS (
    SELECT key, min(seq) AS first_seq, arg_min(agree, seq) AS first_agree,
           arg_min(independent, seq) AS first_independent,
           epoch(arg_min(decided_at, seq)) AS first_decided, arg_max(agree, seq) AS agree,
           epoch(arg_max(decided_at, seq)) AS decided, arg_max(independent, seq) AS independent
    FROM rollout_labels WHERE rollout = $rollout GROUP BY key
)
SELECT u.key, u.event_id, epoch(u.occurred_at), u.shadow, u.eligible, u.segments,
       l.agree, l.decided, l.independent, l.first_seq, l.first_agree, l.first_independent,
       l.first_decided
FROM rollout_units u LEFT JOIN labels l USING (key)
WHERE u.rollout = $rollout
ORDER BY u.seq
"""

STORED_LABELS = """
SELECT key, event_id, agree, epoch(decided_at), epoch(occurred_at), independent
FROM rollout_labels WHERE rollout = $rollout ORDER BY seq
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where the incremental work of one rollout's step stands (``rollout_progress``)."""

    rollout: str
    step_started_at: datetime
    predicted_through: datetime | None = None
    compared_through: datetime | None = None
    labels: int = 0
    """Label numbers handed out so far."""
    evaluated_labels: int = 0
    """``labels`` when the gates were last evaluated (the cadence)."""
    fed: int = 0
    """The last label number the rollback detector has seen."""
    detector: DetectorState = DetectorState()
    mature_cutoff: float | None = None
    expiry_cutoff: float | None = None
    clock: float | None = None
    """The data clock, epoch seconds."""


@dataclass(frozen=True, slots=True)
class LabelDelay:
    """How long labels took to arrive (data time), for one verdict."""

    agreed: bool
    labelled: int
    median: timedelta
    p95: timedelta


def append(tx: Any, rollout: str, units: Iterable[UnitRow], labels: list[tuple[Any, ...]],
            *, units_before: int, labels_before: int) -> None:
    """Append the new units, their segments and the new labels (times as epoch seconds,
    turned into timestamps by DuckDB: a Python datetime per row costs more than the rest)."""
    units = list(units)
    if units:
        texts: dict[tuple[Segment, ...], str] = {}
        for u in units:
            if u.segments not in texts:
                texts[u.segments] = orjson.dumps(u.segments).decode()
        _insert(tx, "rollout_units", {
            "rollout": [rollout] * len(units), "key": [u.key for u in units],
            "event_id": [u.event_id for u in units],
            "occurred_at": [u.occurred_at for u in units],
            "shadow": [u.shadow for u in units], "eligible": [u.eligible for u in units],
            "segments": [texts[u.segments] for u in units],
            "seq": range(units_before + 1, units_before + len(units) + 1)})
    if labels:
        _insert(tx, "rollout_labels", {
            "rollout": [rollout] * len(labels), "key": [r[0] for r in labels],
            "event_id": [r[1] for r in labels], "agree": [bool(r[2]) for r in labels],
            "decided_at": [r[3].timestamp() for r in labels],
            "occurred_at": [r[4] for r in labels], "independent": [r[5] for r in labels],
            "seq": range(labels_before + 1, labels_before + len(labels) + 1)})


_TYPES = {"rollout": pa.string(), "key": pa.string(), "event_id": pa.string(),
          "segments": pa.string(), "occurred_at": pa.float64(),
          "decided_at": pa.float64(), "shadow": pa.bool_(), "eligible": pa.bool_(),
          "agree": pa.bool_(), "independent": pa.bool_(), "seq": pa.int64()}


def _insert(tx: Any, table: str, columns: dict[str, Any]) -> None:
    rows = pa.table({name: pa.array(values, _TYPES[name]) for name, values in columns.items()})
    times = {"occurred_at", "decided_at"} & set(columns)
    select = ", ".join(f"to_timestamp({c}) AS {c}" if c in times else c for c in columns)
    tx.register("new_rows", rows)
    try:
        tx.execute(f"INSERT INTO {table} BY NAME SELECT {select} FROM new_rows")  # noqa: S608 - our tables and columns
    finally:
        tx.unregister("new_rows")


def save(tx: Any, p: Progress) -> None:
    d = p.detector
    tx.execute(
        "INSERT OR REPLACE INTO rollout_progress (rollout, step_started_at, predicted_through, "
        "compared_through, labels, fed, evaluated_labels, statistic, seen, alarmed_at, "
        "mature_cutoff, expiry_cutoff, clock) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [p.rollout, p.step_started_at, p.predicted_through, p.compared_through, p.labels, p.fed,
         p.evaluated_labels, d.statistic, d.seen, d.alarmed_at, p.mature_cutoff,
         p.expiry_cutoff, p.clock])


STORED_DELAYS = """
SELECT rollout, agree, count(*), quantile_cont(delay, 0.5), quantile_cont(delay, 0.95)
FROM (SELECT rollout, agree, greatest(epoch(decided_at) - epoch(occurred_at), 0) AS delay
      FROM rollout_labels
      QUALIFY row_number() OVER (PARTITION BY rollout, key ORDER BY seq) = 1)
GROUP BY ALL ORDER BY ALL
"""


def later_disagreements(delays: Iterable[LabelDelay], minimum: int = 20,
                        ) -> tuple[LabelDelay, LabelDelay] | None:
    """``(disagreements, agreements)`` when disagreements are labelled markedly later
    (median 1.5 times longer, at least ``minimum`` labels of each), else ``None``."""
    by = {d.agreed: d for d in delays}
    agreed, disagreed = by.get(True), by.get(False)
    if agreed is None or disagreed is None or min(agreed.labelled, disagreed.labelled) < minimum:
        return None
    return (disagreed, agreed) if disagreed.median > agreed.median * 1.5 else None


def stored_label_delays(db: Any) -> dict[str, tuple[LabelDelay, ...]]:
    """Each rollout's label delays in its current step, by verdict (disagreements first),
    from the stored labels: what reports and metrics show without a controller."""
    found: dict[str, list[LabelDelay]] = {}
    for rollout, agreed, labelled, median, p95 in db.execute(STORED_DELAYS).fetchall():
        found.setdefault(rollout, []).append(LabelDelay(
            agreed=agreed, labelled=labelled, median=timedelta(seconds=median),
            p95=timedelta(seconds=p95)))
    return {rollout: tuple(delays) for rollout, delays in found.items()}
