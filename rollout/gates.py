"""Gates: pure functions from measurements to a phase, with the evidence they used.

A gate never raises on bad data and never passes without data: no compared
events, or only errors, is ``inconclusive`` (wait) or ``fail``, never
``pass``. The controller reacts to phases; it computes no statistics itself.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from rollout.plan import GateSpec, RollbackSpec, RolloutSpec, StepSpec
from rollout.statistics import Bounds, Cusum, Method, confidence_sequence


class Phase(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One condition's verdict and everything it was decided on."""

    name: str
    phase: Phase
    detail: str
    value: float | None = None
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.value if isinstance(v, Phase) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The combined verdict: any failure fails, else any doubt waits, else pass."""

    checks: tuple[Check, ...]

    @property
    def phase(self) -> Phase:
        phases = {c.phase for c in self.checks}
        if Phase.FAIL in phases:
            return Phase.FAIL
        if Phase.INCONCLUSIVE in phases or not phases:
            return Phase.INCONCLUSIVE
        return Phase.PASS

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.phase is Phase.FAIL]

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase.value, "checks": [c.as_dict() for c in self.checks]}


@dataclass(frozen=True, slots=True)
class SegmentStats:
    field: str
    value: str
    compared: int
    agreed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowStats:
    """Predictions in the trailing window, for sustained error and latency breaches."""

    predictions: int = 0
    errors: int = 0
    p95_latency_ms: float | None = None
    covered: bool = False
    """Whether the whole window lies inside the step (a breach must last the window)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStats:
    """What was measured for the candidate during the current step."""

    elapsed: timedelta
    predictions: int = 0
    errors: int = 0
    abstained: int = 0
    compared: int = 0
    agreed: int = 0
    p95_latency_ms: float | None = None
    violations: int = 0
    """Predictions that violated a hard constraint (errored ones are never checked)."""
    segments: tuple[SegmentStats, ...] = ()
    agreements: tuple[bool, ...] = field(default=(), repr=False)
    """Comparisons in the order the predictions were made, for the rollback detector."""
    window: WindowStats = WindowStats()


def promotion(stats: StepStats, plan: RolloutSpec, step: StepSpec) -> Evaluation:
    """May the rollout leave ``step`` for the next one?"""
    gates = plan.gates
    checks = [
        _at_least("compared events", stats.compared, step.min_compared),
        _dwell(stats.elapsed, step.min_dwell),
        agreement(stats.agreed, stats.compared, gates.agreement, plan.alpha, plan.method,
                  plan.tuning),
        _error_rate(stats.errors, stats.predictions, gates.max_error_rate),
    ]
    if gates.max_p95_latency_ms is not None:
        checks.append(_latency(stats.p95_latency_ms, gates.max_p95_latency_ms))
    if gates.min_coverage is not None:
        checks.append(_coverage(stats, gates.min_coverage))
    if gates.max_violation_rate is not None:
        checks.append(_violation_rate(stats, gates.max_violation_rate))
    checks.extend(_segments(stats.segments, gates))
    return Evaluation(tuple(checks))


def agreement(
    agreed: int, compared: int, threshold: float, alpha: float,
    method: Method = Method.BETA_BINOMIAL, tuning: int = 500,
) -> Check:
    """Pass when the confidence sequence's lower end reaches ``threshold``;
    fail when its upper end is below it; otherwise wait for more data."""
    if compared == 0:
        return Check(name="agreement", phase=Phase.INCONCLUSIVE, threshold=threshold, n=0,
                     detail="no compared events yet")
    bounds = confidence_sequence(agreed, compared, alpha, method, tuning)
    low, high = _ends(bounds)
    rate = agreed / compared
    if low >= threshold:
        phase, detail = Phase.PASS, f"lower bound {low:.4f} ≥ {threshold}"
    elif high < threshold:
        phase, detail = Phase.FAIL, f"upper bound {high:.4f} < {threshold}"
    else:
        phase, detail = Phase.INCONCLUSIVE, f"{low:.4f} … {high:.4f} still contains {threshold}"
    return Check(name="agreement", phase=phase, value=rate, threshold=threshold, low=low,
                 high=high, n=compared, detail=f"{detail} ({method.value}, α={alpha})")


def _ends(bounds: Bounds) -> tuple[float, float]:
    assert bounds.low is not None and bounds.high is not None
    return bounds.low, bounds.high


def _at_least(name: str, value: int, minimum: int) -> Check:
    phase = Phase.PASS if value >= minimum else Phase.INCONCLUSIVE
    return Check(name=name, phase=phase, value=value, threshold=minimum, n=value,
                 detail=f"{value} of at least {minimum}")


def _dwell(elapsed: timedelta, minimum: timedelta) -> Check:
    phase = Phase.PASS if elapsed >= minimum else Phase.INCONCLUSIVE
    return Check(name="dwell time", phase=phase, value=elapsed.total_seconds(),
                 threshold=minimum.total_seconds(),
                 detail=f"{_span(elapsed)} of at least {_span(minimum)}")


def _error_rate(errors: int, predictions: int, budget: float | None) -> Check:
    if predictions == 0:
        return Check(name="error rate", phase=Phase.INCONCLUSIVE, threshold=budget, n=0,
                     detail="no predictions yet")
    rate = errors / predictions
    if budget is None:
        phase = Phase.FAIL if errors == predictions else Phase.PASS
        detail = "every prediction errored" if errors == predictions else "no budget set"
    else:
        phase = Phase.PASS if rate <= budget else Phase.FAIL
        detail = f"{rate:.2%} {'≤' if phase is Phase.PASS else '>'} budget {budget:.2%}"
    return Check(name="error rate", phase=phase, value=rate, threshold=budget, n=predictions,
                 detail=detail)


def _latency(p95: float | None, budget: float, name: str = "p95 latency") -> Check:
    if p95 is None:
        return Check(name=name, phase=Phase.INCONCLUSIVE, threshold=budget,
                     detail="no successful predictions yet")
    phase = Phase.PASS if p95 <= budget else Phase.FAIL
    return Check(name=name, phase=phase, value=p95, threshold=budget,
                 detail=f"{p95:.0f} ms {'≤' if phase is Phase.PASS else '>'} {budget:.0f} ms")


def _coverage(stats: StepStats, floor: float) -> Check:
    answered = stats.predictions - stats.errors
    if answered <= 0:
        return Check(name="coverage", phase=Phase.INCONCLUSIVE, threshold=floor, n=0,
                     detail="no successful predictions yet")
    coverage = (answered - stats.abstained) / answered
    phase = Phase.PASS if coverage >= floor else Phase.FAIL
    return Check(name="coverage", phase=phase, value=coverage, threshold=floor, n=answered,
                 detail=f"{coverage:.2%} of answers not abstained, floor {floor:.2%}")


def _violation_rate(stats: StepStats, budget: float) -> Check:
    checked = stats.predictions - stats.errors
    if checked <= 0:
        return Check(name="violations", phase=Phase.INCONCLUSIVE, threshold=budget, n=0,
                     detail="no successful predictions yet")
    rate = stats.violations / checked
    phase = Phase.PASS if rate <= budget else Phase.FAIL
    return Check(name="violations", phase=phase, value=rate, threshold=budget, n=checked,
                 detail=f"{rate:.2%} of checked predictions violated a hard constraint, "
                        f"{'≤' if phase is Phase.PASS else '>'} budget {budget:.2%}")


def _segments(segments: tuple[SegmentStats, ...], gates: GateSpec) -> list[Check]:
    """Segments with enough samples and a floor; below the floor fails, whatever the total."""
    checks = []
    spec = gates.segments
    for s in segments:
        floor = spec.floor_of(s.field, s.value)
        if floor is None or s.compared < spec.min_samples:
            continue
        rate = s.agreed / s.compared
        phase = Phase.PASS if rate >= floor else Phase.FAIL
        checks.append(Check(
            name=f"segment {s.field}={s.value}", phase=phase, value=rate, threshold=floor,
            n=s.compared,
            detail=f"{rate:.2%} {'≥' if phase is Phase.PASS else '<'} floor {floor:.2%}"))
    return checks


def rollback(stats: StepStats, spec: RollbackSpec, detector: Cusum) -> Evaluation:
    """Must a live step go back to shadow? ``fail`` means roll back now."""
    result = detector.run(stats.agreements)
    if result.alarmed_at is not None:
        cusum = Check(
            name="degradation", phase=Phase.FAIL, value=float(result.statistic),
            threshold=float(detector.threshold), n=result.seen,
            detail=(f"CUSUM reached {result.statistic} ≥ {detector.threshold} at compared "
                    f"event {result.alarmed_at} (healthy {detector.healthy}, degraded "
                    f"{detector.degraded})"))
    else:
        cusum = Check(
            name="degradation", phase=Phase.PASS, value=float(result.statistic),
            threshold=float(detector.threshold), n=result.seen,
            detail=f"CUSUM at {result.statistic} of {detector.threshold}")
    checks = [cusum]
    window = stats.window
    sustained = window.covered and window.predictions >= spec.min_window_predictions
    if spec.max_error_rate is not None and sustained:
        rate = window.errors / window.predictions
        checks.append(Check(
            name="error rate (window)", phase=Phase.FAIL if rate > spec.max_error_rate
            else Phase.PASS, value=rate, threshold=spec.max_error_rate, n=window.predictions,
            detail=f"{rate:.2%} over the last {_span(spec.window)}"))
    if spec.max_p95_latency_ms is not None and sustained and window.p95_latency_ms is not None:
        checks.append(_latency(window.p95_latency_ms, spec.max_p95_latency_ms,
                               "p95 latency (window)"))
    return Evaluation(tuple(checks))


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
