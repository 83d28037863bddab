"""Measurements of the current step, aggregated in DuckDB.

A step's measurements are those of the predictions the rolled-out candidate
made since the step started: each step restarts its statistics. Errors,
latency and violations count predictions; agreement counts units, one per
key (:mod:`rollout.units`, which keeps both up to date incrementally). Only
the trailing window's error rate and latency are read here, over the
window's rows alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rollout.gates import StepStats, WindowStats
from rollout.state import RolloutState
from rollout.statistics import Cusum
from rollout.units import Progress, Units
from shadow.store.database import Store

_STEP = """
SELECT * FROM predictions
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
  AND predicted_at >= $since
"""

_WINDOW = f"""
SELECT count(*), count(error_type), quantile_cont(latency_ms, 0.95) FILTER (error_type IS NULL)
FROM ({_STEP})
"""  # noqa: S608 - constant SQL


def measure(store: Store, state: RolloutState, units: Units, progress: Progress,
            detector: Cusum, *, now: datetime, window: timedelta) -> StepStats:
    """What the candidate did during the current step, up to ``now``.

    ``progress`` is where the step's units stand (synced by the caller); the
    detector is advanced, in memory, over the labels it has not seen.
    """
    params: dict[str, Any] = {"candidate": state.candidate, "version": state.version}
    tally = units.tally()
    counts, segments = units.counts()
    fed: tuple[tuple[str, bool], ...] = ()
    detector_state = progress.detector
    if state.live:
        fresh = units.fresh_agreements(progress)
        detector_state = detector.advance(progress.detector, (agree for _, agree in fresh))
        fed = tuple(fresh[: detector_state.seen - progress.detector.seen])
    window_start = now - window
    w_predictions, w_errors, w_p95 = store.db.execute(
        _WINDOW, {**params, "since": max(window_start, state.step_started_at)}).fetchall()[0]
    return StepStats(
        elapsed=now - state.step_started_at, predictions=tally.predictions,
        errors=tally.errors, abstained=tally.abstained, p95_latency_ms=tally.p95_latency_ms,
        violations=tally.violations,
        units=counts, segments=segments, detector=detector_state, fed=fed,
        window=WindowStats(predictions=w_predictions, errors=w_errors, p95_latency_ms=w_p95,
                           covered=window_start >= state.step_started_at),
    )
