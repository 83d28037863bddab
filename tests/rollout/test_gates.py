"""Gate decisions on constructed measurements, against bounds computed here independently."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from rollout.gates import Phase, StepStats, WindowStats, keys_to_decide, promotion, rollback
from rollout.statistics import Cusum, DetectorState
from rollout.units import SegmentUnits, UnitCounts
from shadow.config.rollout import RolloutSpec

ALPHA = 0.05


def plan(method: str = "beta_binomial", **gates: object) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "steps": [{"percent": 0, "min_compared": 100, "min_dwell": "1h"},
                  {"percent": 5}],
        "sink": {"kind": "file", "path": "decisions.jsonl"},
        "gates": {"agreement": 0.9, **gates}, "alpha": ALPHA, "method": method,
    })


def log_above_by_integration(s: float, n: int, t: float, grid: int = 20_000) -> float:
    """ln of ∫_t^1 (q/t)^s ((1−q)/(1−t))^(n−s) dq / (1 − t), by the midpoint rule."""
    logs = []
    for i in range(grid):
        q = t + (i + 0.5) * (1 - t) / grid
        logs.append(s * math.log(q / t) + (n - s) * math.log((1 - q) / (1 - t)))
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / grid)


def log_below_by_integration(s: float, n: int, t: float, grid: int = 20_000) -> float:
    """ln of ∫_0^t (q/t)^s ((1−q)/(1−t))^(n−s) dq / t."""
    logs = []
    for i in range(grid):
        q = (i + 0.5) * t / grid
        logs.append(s * math.log(q / t) + (n - s) * math.log((1 - q) / (1 - t)))
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / grid)


def log_mixture_by_integration(s: int, n: int, p: float, grid: int = 20_000) -> float:
    """ln of ∫ q^s (1−q)^(n−s) dq / (p^s (1−p)^(n−s)), by the midpoint rule in log space."""
    logs = []
    for i in range(grid):
        q = (i + 0.5) / grid
        logs.append(s * math.log(q) + (n - s) * math.log1p(-q))
    top = max(logs)
    integral = top + math.log(sum(math.exp(v - top) for v in logs) / grid)
    return integral - s * math.log(p) - (n - s) * math.log1p(-p)


def smallest_passing(n: int, threshold: float) -> int:
    """The fewest agreements out of n whose sequence excludes every rate below the threshold."""
    for s in range(math.ceil(threshold * n), n + 1):
        if log_mixture_by_integration(s, n, threshold) >= math.log(1 / ALPHA):
            return s
    raise AssertionError("none passes")


def stats(agreed: float, compared: int, *, pending: int = 0, **kw: object) -> StepStats:
    units = UnitCounts(keys=compared + pending, mature=compared + pending, labelled=compared,
                       agreed=agreed)
    values: dict[str, object] = {"elapsed": timedelta(hours=2), "predictions": compared,
                                 "errors": 0, "units": units}
    values.update(kw)
    return StepStats(**values)  # type: ignore[arg-type]


def segment(field: str, value: str, compared: int, agreed: float,
            pending: int = 0) -> SegmentUnits:
    return SegmentUnits(field, value, compared + pending, compared, agreed)


def agreement_check(s: StepStats, p: RolloutSpec) -> Phase:
    (check,) = [c for c in promotion(s, p, p.steps[0]).checks if c.name == "agreement"]
    return check.phase


def test_agreement_passes_exactly_where_the_independent_lower_bound_reaches_the_threshold() -> None:
    n = 400
    s_min = smallest_passing(n, 0.9)
    p = plan()
    assert agreement_check(stats(s_min, n), p) is Phase.PASS
    assert agreement_check(stats(s_min - 1, n), p) is Phase.INCONCLUSIVE
    assert promotion(stats(s_min, n), p, p.steps[0]).phase is Phase.PASS


def test_agreement_fails_where_the_independent_upper_bound_is_below_the_threshold() -> None:
    n = 400
    # The largest s whose sequence excludes 0.9 from above.
    s_max = next(s for s in range(math.ceil(0.9 * n) - 1, 0, -1)
                 if log_mixture_by_integration(s, n, 0.9) >= math.log(1 / ALPHA))
    p = plan()
    assert agreement_check(stats(s_max, n), p) is Phase.FAIL
    assert agreement_check(stats(s_max + 1, n), p) is Phase.INCONCLUSIVE


def test_the_evidence_carries_the_bounds_threshold_and_sample_size() -> None:
    p = plan()
    (check,) = [c for c in promotion(stats(380, 400), p, p.steps[0]).checks
                if c.name == "agreement"]
    assert check.n == 400 and check.threshold == 0.9 and check.value == 380 / 400
    assert check.low is not None and check.high is not None
    # At its ends the mixture equals 1/alpha, computed independently.
    assert log_mixture_by_integration(380, 400, check.low) == pytest.approx(
        math.log(1 / ALPHA), abs=1e-3)


def test_no_data_is_inconclusive_never_a_pass() -> None:
    p = plan()
    evaluation = promotion(StepStats(elapsed=timedelta(days=3)), p, p.steps[0])
    assert evaluation.phase is Phase.INCONCLUSIVE


def test_only_errors_is_a_failure_never_a_pass() -> None:
    p = plan(max_error_rate=None)
    evaluation = promotion(
        StepStats(elapsed=timedelta(days=3), predictions=5000, errors=5000), p, p.steps[0])
    assert evaluation.phase is Phase.FAIL
    assert {c.name for c in evaluation.failed()} == {"error rate"}


def test_too_few_compared_events_or_too_short_a_dwell_waits() -> None:
    p = plan()
    assert promotion(stats(99, 99), p, p.steps[0]).phase is Phase.INCONCLUSIVE
    short = stats(400, 400, elapsed=timedelta(minutes=59))
    assert promotion(short, p, p.steps[0]).phase is Phase.INCONCLUSIVE
    assert promotion(stats(400, 400), p, p.steps[0]).phase is Phase.PASS


def test_an_error_rate_over_budget_blocks() -> None:
    p = plan(max_error_rate=0.02)
    evaluation = promotion(stats(400, 400, predictions=420, errors=20), p, p.steps[0])
    assert [c.name for c in evaluation.failed()] == ["error rate"]


def test_p95_latency_over_budget_blocks() -> None:
    p = plan(max_p95_latency_ms=800)
    assert promotion(stats(400, 400, p95_latency_ms=801.0), p, p.steps[0]).phase is Phase.FAIL
    assert promotion(stats(400, 400, p95_latency_ms=800.0), p, p.steps[0]).phase is Phase.PASS


def test_coverage_below_its_floor_blocks() -> None:
    p = plan(min_coverage=0.8)
    ok = stats(400, 400, predictions=1000, abstained=200)
    low = stats(400, 400, predictions=1000, abstained=201)
    assert promotion(ok, p, p.steps[0]).phase is Phase.PASS
    assert [c.name for c in promotion(low, p, p.steps[0]).failed()] == ["coverage"]


def smallest_segment_pass(n: int, floor: float) -> int:
    return next(s for s in range(math.ceil(floor * n), n + 1)
                if log_above_by_integration(s, n, floor) >= math.log(1 / ALPHA))


def largest_segment_fail(n: int, floor: float) -> int:
    return next(s for s in range(math.floor(floor * n), -1, -1)
                if log_below_by_integration(s, n, floor) >= math.log(1 / ALPHA))


def segment_phases(p: RolloutSpec, *segments: SegmentUnits) -> dict[str, Phase]:
    evaluation = promotion(stats(990, 1000, segments=segments), p, p.steps[0])
    return {c.name: c.phase for c in evaluation.checks if c.name.startswith("segment")}


def test_a_segment_passes_or_fails_only_where_its_own_sequence_decides() -> None:
    p = plan(segments={"min_samples": 100, "floor": 0.85})
    n = 200
    passing, failing = smallest_segment_pass(n, 0.85), largest_segment_fail(n, 0.85)
    phases = segment_phases(
        p, segment("language", "en", n, passing), segment("language", "de", n, failing),
        segment("language", "fr", n, passing - 1), segment("language", "it", n, failing + 1))
    assert phases == {"segment language=en": Phase.PASS, "segment language=de": Phase.FAIL,
                      "segment language=fr": Phase.INCONCLUSIVE,
                      "segment language=it": Phase.INCONCLUSIVE}


def test_a_segment_below_its_floor_blocks_what_the_overall_rate_allows() -> None:
    p = plan(segments={"min_samples": 100, "floor": 0.85, "floors": {"language=de": 0.8}})
    segments = (segment("language", "en", 800, 790), segment("language", "de", 300, 200))
    overall = stats(1050, 1100, segments=segments)
    assert agreement_check(overall, p) is Phase.PASS
    evaluation = promotion(overall, p, p.steps[0])
    assert [c.name for c in evaluation.failed()] == ["segment language=de"]


def test_a_segment_too_small_to_judge_holds_the_step_unless_small_ones_are_allowed() -> None:
    held = plan(segments={"min_samples": 100, "floor": 0.85})
    small = segment("language", "fr", 99, 10)
    evaluation = promotion(stats(990, 1000, segments=(small,)), held, held.steps[0])
    (check,) = [c for c in evaluation.checks if c.name == "segment language=fr"]
    assert check.phase is Phase.INCONCLUSIVE and "1 more" in check.detail
    assert evaluation.phase is Phase.INCONCLUSIVE
    allowed = plan(segments={"min_samples": 100, "floor": 0.85, "allow_small": True})
    assert promotion(stats(990, 1000, segments=(small,)), allowed,
                     allowed.steps[0]).phase is Phase.PASS


def test_unlabelled_segment_keys_count_against_it() -> None:
    p = plan(segments={"min_samples": 100, "floor": 0.85})
    n = 200
    passing = smallest_segment_pass(n, 0.85)
    # The same agreements with ten more keys past their window but unlabelled: no pass.
    phases = segment_phases(p, segment("language", "en", n, passing, pending=10))
    assert phases == {"segment language=en": Phase.INCONCLUSIVE}


def test_the_keys_a_waiting_segment_needs_are_where_the_sequence_would_decide() -> None:
    assert log_above_by_integration(0.93 * 50, 50, 0.85) < math.log(1 / ALPHA)
    more = keys_to_decide(0.93, 50, 0.85, ALPHA)
    assert more is not None
    n = 50 + more
    assert log_above_by_integration(0.93 * n, n, 0.85) >= math.log(1 / ALPHA)
    assert log_above_by_integration(0.93 * (n - 1), n - 1, 0.85) < math.log(1 / ALPHA)
    assert keys_to_decide(0.85, 100, 0.85, ALPHA) is None


def test_rollback_fails_once_the_detector_has_alarmed() -> None:
    p = plan()
    detector = Cusum(healthy=0.95, degraded=0.8, up=8, threshold=40)
    # 5 disagreements in a row: 40, the threshold, reached at the 5th.
    alarmed = detector.advance(DetectorState(), (True,) * 50 + (False,) * 5)
    assert alarmed.alarmed_at == 55
    evaluation = rollback(stats(50, 55, detector=alarmed), p.rollback, detector)
    assert evaluation.phase is Phase.FAIL
    assert evaluation.checks[0].n == 55
    calm = detector.advance(DetectorState(), (True,) * 50 + (False,) * 4 + (True,) * 1)
    assert calm.alarmed_at is None and calm.statistic == 31
    assert rollback(stats(51, 55, detector=calm), p.rollback, detector).phase is Phase.PASS


def test_the_one_sided_gate_passes_exactly_where_the_independent_mixture_reaches_1_over_alpha(
) -> None:
    n = 300
    s_min = next(s for s in range(math.ceil(0.9 * n), n + 1)
                 if log_above_by_integration(s, n, 0.9) >= math.log(1 / ALPHA))
    p = plan("one_sided")
    assert agreement_check(stats(s_min, n), p) is Phase.PASS
    assert agreement_check(stats(s_min - 1, n), p) is Phase.INCONCLUSIVE


def test_the_one_sided_gate_fails_exactly_where_the_lower_mixture_reaches_1_over_alpha() -> None:
    n = 300
    s_max = largest_segment_fail(n, 0.9)
    p = plan("one_sided")
    assert agreement_check(stats(s_max, n), p) is Phase.FAIL
    assert agreement_check(stats(s_max + 1, n), p) is Phase.INCONCLUSIVE


def test_mature_keys_without_a_label_count_against_promotion_and_for_failing_later() -> None:
    n = 300
    p = plan("one_sided")
    s_min = next(s for s in range(math.ceil(0.9 * n), n + 1)
                 if log_above_by_integration(s, n, 0.9) >= math.log(1 / ALPHA))
    # Pending keys are disagreements for the lower end: the same agreements over more keys.
    assert agreement_check(stats(s_min, n - 5, pending=5), p) is Phase.PASS
    assert agreement_check(stats(s_min - 1, n - 5, pending=6), p) is Phase.INCONCLUSIVE
    # ... and agreements for the upper end: what fails labelled does not fail half-labelled.
    s_max = largest_segment_fail(n, 0.9)
    assert agreement_check(stats(s_max, n), p) is Phase.FAIL
    assert agreement_check(stats(s_max - 5, n - 10, pending=10), p) is Phase.INCONCLUSIVE


def test_too_few_labels_past_the_window_hold_the_step() -> None:
    p = plan("one_sided")
    evaluation = promotion(stats(700, 700, pending=300), p, p.steps[0])
    (labels,) = [c for c in evaluation.checks if c.name == "labels"]
    assert labels.phase is Phase.INCONCLUSIVE and labels.value == 0.7
    assert evaluation.phase is Phase.INCONCLUSIVE
    assert promotion(stats(950, 950, pending=50), p, p.steps[0]).phase is Phase.PASS


def test_a_sustained_error_rate_rolls_back_but_a_partial_window_does_not() -> None:
    p = plan()
    detector = Cusum(healthy=0.95, degraded=0.8, up=8, threshold=1000)
    breach = WindowStats(predictions=100, errors=30, covered=True)
    assert rollback(stats(0, 0, window=breach), p.rollback, detector).phase is Phase.FAIL
    young = WindowStats(predictions=100, errors=30, covered=False)
    assert rollback(stats(0, 0, window=young), p.rollback, detector).phase is Phase.PASS
