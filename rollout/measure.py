"""Measurements of the current step, aggregated in DuckDB.

A step's measurements are those of the predictions the rolled-out candidate
made since the step started: each step restarts its statistics.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rollout.gates import SegmentStats, StepStats, WindowStats
from rollout.state import RolloutState
from shadow.store import Store

_STEP = """
SELECT * FROM predictions
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
  AND predicted_at >= $since
"""

_COUNTS = f"""
SELECT count(*), count(error_type), count(*) FILTER (abstained),
       quantile_cont(latency_ms, 0.95) FILTER (error_type IS NULL),
       count(violations)
FROM ({_STEP})
"""

_COMPARED = f"""
SELECT count(*), count(*) FILTER (c.agree)
FROM ({_STEP}) p JOIN comparisons c USING (event_id, candidate)
WHERE c.version IS NOT DISTINCT FROM p.version AND c.comparator = $comparator
"""

_SEGMENTS = f"""
SELECT s.field, s.value, count(*), count(*) FILTER (c.agree)
FROM ({_STEP}) p JOIN comparisons c USING (event_id, candidate)
JOIN event_segments s USING (event_id)
WHERE c.version IS NOT DISTINCT FROM p.version AND c.comparator = $comparator
GROUP BY ALL ORDER BY 1, 2
"""

_IN_ORDER = f"""
SELECT c.agree
FROM ({_STEP}) p JOIN comparisons c USING (event_id, candidate)
WHERE c.version IS NOT DISTINCT FROM p.version AND c.comparator = $comparator
ORDER BY p.predicted_at, p.event_id
"""


def measure(store: Store, state: RolloutState, comparator: str, *, now: datetime,
            window: timedelta) -> StepStats:
    """What the candidate did during the current step, up to ``now``."""
    params: dict[str, Any] = {"candidate": state.candidate, "version": state.version,
                              "since": state.step_started_at}
    db = store.db
    predictions, errors, abstained, p95, violations = db.execute(_COUNTS, params).fetchall()[0]
    with_comparator = {**params, "comparator": comparator}
    compared, agreed = db.execute(_COMPARED, with_comparator).fetchall()[0]
    segments = tuple(SegmentStats(*row) for row in
                     db.execute(_SEGMENTS, with_comparator).fetchall())
    agreements: tuple[bool, ...] = ()
    if state.live:
        agreements = tuple(row[0] for row in db.execute(_IN_ORDER, with_comparator).fetchall())
    window_start = now - window
    w_predictions, w_errors, _, w_p95, _ = db.execute(
        _COUNTS, {**params, "since": max(window_start, state.step_started_at)}).fetchall()[0]
    return StepStats(
        elapsed=now - state.step_started_at, predictions=predictions, errors=errors,
        abstained=abstained, compared=compared, agreed=agreed, p95_latency_ms=p95,
        violations=violations,
        segments=segments, agreements=agreements,
        window=WindowStats(predictions=w_predictions, errors=w_errors, p95_latency_ms=w_p95,
                           covered=window_start >= state.step_started_at),
    )
