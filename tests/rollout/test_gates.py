"""Gate decisions on constructed measurements, against bounds computed here independently."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from rollout.gates import Phase, SegmentStats, StepStats, WindowStats, promotion, rollback
from rollout.plan import RolloutSpec
from rollout.statistics import Cusum

ALPHA = 0.05


def plan(**gates: object) -> RolloutSpec:
    return RolloutSpec.model_validate({
        "steps": [{"percent": 0, "min_compared": 100, "min_dwell": "1h"},
                  {"percent": 5}],
        "sink": {"kind": "file", "path": "decisions.jsonl"},
        "gates": {"agreement": 0.9, **gates}, "alpha": ALPHA,
    })


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


def stats(agreed: int, compared: int, **kw: object) -> StepStats:
    values: dict[str, object] = {"elapsed": timedelta(hours=2), "predictions": compared,
                                 "errors": 0, "compared": compared, "agreed": agreed}
    values.update(kw)
    return StepStats(**values)  # type: ignore[arg-type]


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


def test_a_segment_below_its_floor_blocks_what_the_overall_rate_allows() -> None:
    p = plan(segments={"min_samples": 100, "floor": 0.85, "floors": {"language=de": 0.8}})
    segments = (SegmentStats("language", "en", 800, 790), SegmentStats("language", "de", 200, 159),
                SegmentStats("language", "fr", 99, 10))  # too few to judge
    overall = stats(949, 1000, segments=segments)
    evaluation = promotion(overall, p, p.steps[0])
    assert [c.name for c in evaluation.checks if c.name == "agreement"]
    assert agreement_check(overall, p) is Phase.PASS
    assert [c.name for c in evaluation.failed()] == ["segment language=de"]
    fixed = stats(950, 1000, segments=(SegmentStats("language", "de", 200, 160),))
    assert promotion(fixed, p, p.steps[0]).phase is Phase.PASS


def test_rollback_fires_when_the_cusum_crosses_its_threshold() -> None:
    p = plan()
    detector = Cusum(healthy=0.95, degraded=0.8, up=8, threshold=40)
    # 5 disagreements in a row: 40, the threshold, reached at the 5th.
    agreements = (True,) * 50 + (False,) * 5
    evaluation = rollback(stats(50, 55, agreements=agreements), p.rollback, detector)
    assert evaluation.phase is Phase.FAIL
    assert evaluation.checks[0].n == 55
    calm = (True,) * 50 + (False,) * 4 + (True,) * 1
    assert rollback(stats(51, 55, agreements=calm), p.rollback, detector).phase is Phase.PASS


def test_a_sustained_error_rate_rolls_back_but_a_partial_window_does_not() -> None:
    p = plan()
    detector = Cusum(healthy=0.95, degraded=0.8, up=8, threshold=1000)
    breach = WindowStats(predictions=100, errors=30, covered=True)
    assert rollback(stats(0, 0, window=breach), p.rollback, detector).phase is Phase.FAIL
    young = WindowStats(predictions=100, errors=30, covered=False)
    assert rollback(stats(0, 0, window=young), p.rollback, detector).phase is Phase.PASS
