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

from rollout.statistics import Cusum, DetectorState, confidence_sequence, one_sided
from rollout.units import SegmentUnits, UnitCounts
from shadow.config.rollout import GateSpec, Method, RollbackSpec, RolloutSpec, StepSpec


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
    """What was measured for the candidate during the current step.

    Predictions, errors, latency and violations count events; agreement counts
    units, one per key (:mod:`rollout.units`).
    """

    elapsed: timedelta
    predictions: int = 0
    errors: int = 0
    abstained: int = 0
    p95_latency_ms: float | None = None
    violations: int = 0
    """Predictions that violated a hard constraint (errored ones are never checked)."""
    units: UnitCounts = UnitCounts()
    segments: tuple[SegmentUnits, ...] = ()
    detector: DetectorState = DetectorState()
    """The rollback detector after the labels that arrived since it last ran."""
    fed: tuple[tuple[str, bool], ...] = field(default=(), repr=False)
    """The (key, agreed) labels fed to the detector by this measurement, in order."""
    window: WindowStats = WindowStats()

    @property
    def compared(self) -> int:
        """Keys past their label window that are labelled."""
        return self.units.labelled

    @property
    def agreed(self) -> float:
        return self.units.agreed


def promotion(stats: StepStats, plan: RolloutSpec, step: StepSpec) -> Evaluation:
    """May the rollout leave ``step`` for the next one?"""
    gates = plan.gates
    units = stats.units
    checks = [
        _at_least("compared keys", units.labelled, step.min_compared),
        _dwell(stats.elapsed, step.min_dwell),
        _labelled(units, plan.min_labelled),
        agreement(units.agreed, units.mature, gates.agreement, plan.alpha, plan.method,
                  plan.tuning, pending=units.pending),
        _error_rate(stats.errors, stats.predictions, gates.max_error_rate),
    ]
    if gates.max_p95_latency_ms is not None:
        checks.append(_latency(stats.p95_latency_ms, gates.max_p95_latency_ms))
    if gates.min_coverage is not None:
        checks.append(_coverage(stats, gates.min_coverage))
    if gates.max_violation_rate is not None:
        checks.append(_violation_rate(stats, gates.max_violation_rate))
    checks.extend(_segments(stats.segments, gates, plan.alpha))
    return Evaluation(tuple(checks))


def agreement(
    agreed: float, judged: int, threshold: float, alpha: float,
    method: Method = Method.ONE_SIDED, tuning: int = 500, *, pending: int = 0,
) -> Check:
    """Pass when the confidence sequence's lower end reaches ``threshold``;
    fail when its upper end is below it; otherwise wait for more data.

    ``judged`` units are past their label window; ``pending`` of them have no
    label yet and count as disagreements for the lower end, agreements for
    the upper one, so late labels can neither promote nor fail a candidate.
    """
    if judged == 0:
        return Check(name="agreement", phase=Phase.INCONCLUSIVE, threshold=threshold, n=0,
                     detail="no keys past their label window yet")
    low = confidence_sequence(agreed, judged, alpha, method, tuning).low
    high = confidence_sequence(agreed + pending, judged, alpha, method, tuning).high
    assert low is not None and high is not None
    labelled = judged - pending
    rate = agreed / labelled if labelled else 0.0
    if _passes(agreed, judged, threshold, alpha, method, low):
        phase, detail = Phase.PASS, f"lower bound {low:.4f} ≥ {threshold}"
    elif _fails(agreed + pending, judged, threshold, alpha, method, high):
        phase, detail = Phase.FAIL, f"upper bound {high:.4f} < {threshold}"
    else:
        phase, detail = Phase.INCONCLUSIVE, f"{low:.4f} … {high:.4f} still contains {threshold}"
    unlabelled = f", {pending} unlabelled counted against" if pending else ""
    return Check(name="agreement", phase=phase, value=rate, threshold=threshold, low=low,
                 high=high, n=judged,
                 detail=f"{detail} ({method.value}, α={alpha}, {judged} keys{unlabelled})")


def _passes(successes: float, n: int, threshold: float, alpha: float, method: Method,
            low: float) -> bool:
    if method is Method.ONE_SIDED:
        return threshold <= 0.0 or (threshold < 1.0
                                    and one_sided(successes, n, threshold, alpha) == 1)
    return low >= threshold


def _fails(successes: float, n: int, threshold: float, alpha: float, method: Method,
           high: float) -> bool:
    if method is Method.ONE_SIDED:
        return 0.0 < threshold < 1.0 and one_sided(successes, n, threshold, alpha) == -1
    return high < threshold


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


def _labelled(units: UnitCounts, minimum: float) -> Check:
    share = units.labelled_share
    window = span(units.window)
    if share is None:
        return Check(name="labels", phase=Phase.INCONCLUSIVE, threshold=minimum, n=0,
                     detail=f"no key past its label window ({window}) yet")
    phase = Phase.PASS if share >= minimum else Phase.INCONCLUSIVE
    return Check(name="labels", phase=phase, value=share, threshold=minimum, n=units.mature,
                 detail=f"{units.labelled} of {units.mature} keys past their label window "
                        f"({window}) are labelled ({share:.1%}, at least {minimum:.0%} needed)")


def _segments(segments: tuple[SegmentUnits, ...], gates: GateSpec, alpha: float) -> list[Check]:
    """Each segment with a floor is a gate of its own: its sequence must clear the floor
    (pass) or fall below it (fail); until then, and while it is too small, it holds."""
    checks = []
    spec = gates.segments
    for s in segments:
        floor = spec.floor_of(s.field, s.value)
        if floor is None:
            continue
        name = f"segment {s.field}={s.value}"
        if s.mature < spec.min_samples:
            if spec.allow_small:
                continue
            checks.append(Check(
                name=name, phase=Phase.INCONCLUSIVE, threshold=floor, n=s.mature,
                detail=f"{s.mature} keys of the {spec.min_samples} needed to judge it against "
                       f"its floor {floor:.2%} ({spec.min_samples - s.mature} more)"))
            continue
        checks.append(_segment(name, s, floor, alpha))
    return checks


def _segment(name: str, s: SegmentUnits, floor: float, alpha: float) -> Check:
    labelled = s.labelled
    rate = s.agreed / labelled if labelled else 0.0
    if _passes(s.agreed, s.mature, floor, alpha, Method.ONE_SIDED, 0.0):
        phase, detail = Phase.PASS, f"shown above its floor {floor:.2%}"
    elif _fails(s.agreed + s.pending, s.mature, floor, alpha, Method.ONE_SIDED, 1.0):
        phase, detail = Phase.FAIL, f"shown below its floor {floor:.2%}"
    else:
        more = keys_to_decide(rate, s.mature, floor, alpha)
        phase = Phase.INCONCLUSIVE
        if more == 0:
            wait = f"waiting for the labels of {s.pending} keys past their label window"
        elif more is None:
            wait = "at this rate no number of keys will tell"
        else:
            wait = f"about {more} more keys at this rate"
        detail = f"not yet shown above or below its floor {floor:.2%}; {wait}"
    return Check(name=name, phase=phase, value=rate, threshold=floor, n=s.mature,
                 detail=f"{rate:.2%} of {labelled} labelled keys: {detail}")


def keys_to_decide(rate: float, judged: int, threshold: float, alpha: float,
                   limit: int = 10_000_000) -> int | None:
    """About how many more keys, at ``rate``, until the one-sided tests decide
    against ``threshold``; ``None`` when not within ``limit``."""
    if not 0.0 < threshold < 1.0 or abs(rate - threshold) < 1e-9:
        return None

    def decided(n: int) -> bool:
        return one_sided(rate * n, n, threshold, alpha) != 0

    low, high = judged, max(judged, 1)
    while not decided(high):
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if decided(middle) else (middle, high)
    return high - judged


def rollback(stats: StepStats, spec: RollbackSpec, detector: Cusum) -> Evaluation:
    """Must a live step go back to shadow? ``fail`` means roll back now.

    The detector has run forward over the independent labels in the order they
    arrived (:attr:`StepStats.detector`); an alarm is final for the step.
    """
    state = stats.detector
    threshold = detector.threshold_at(max(state.seen - 1, 0))
    levels = f"healthy {detector.healthy}, degraded {detector.degraded}"
    if state.alarmed_at is not None:
        cusum = Check(
            name="degradation", phase=Phase.FAIL, value=float(state.statistic),
            threshold=float(threshold), n=state.seen,
            detail=(f"CUSUM reached {state.statistic} ≥ {threshold} at independent label "
                    f"{state.alarmed_at} of the step ({levels})"))
    else:
        cusum = Check(
            name="degradation", phase=Phase.PASS, value=float(state.statistic),
            threshold=float(threshold), n=state.seen,
            detail=f"CUSUM at {state.statistic} of {threshold} after {state.seen} independent "
                   f"labels ({levels})")
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


def span(delta: timedelta) -> str:
    """A duration as a person reads it: ``4.3d``, ``6h``, ``90s``."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def detector(plan: RolloutSpec) -> Cusum:
    """The rollback detector the plan asks for: its levels, false-alarm budget and horizon."""
    healthy, degraded = plan.rollback.levels(plan.gates.agreement)
    return Cusum.design(healthy=healthy, degraded=degraded,
                        false_alarm=plan.rollback.false_alarm, horizon=plan.rollback.horizon)
