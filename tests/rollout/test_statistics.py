"""The gate statistics, checked against figures computed here by other means.

Every expected value is worked out in this file, by numerical integration,
a dense linear solve, an exact distribution or by hand, never by the code
under test.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence

import pytest

from rollout.statistics import (
    Bounds,
    Cusum,
    DetectorState,
    _log_regularised_beta,
    average_run_length,
    beta_binomial,
    beta_binomial_high_below,
    beta_binomial_low_at_least,
    confidence_sequence,
    log_above,
    log_below,
    normal_mixture,
    one_sided,
    one_sided_bounds,
)
from shadow.config.rollout import Method

# -- independent references ---------------------------------------------------------


def simpson(f: Callable[[float], float], a: float, b: float, intervals: int) -> float:
    """Simpson's rule with an even number of intervals."""
    h = (b - a) / intervals
    inner = sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, intervals))
    return (f(a) + inner + f(b)) * h / 3


def log_likelihood(successes: int, n: int, q: float) -> float:
    """ln(q^S (1 − q)^(n − S)), with 0^0 = 1."""
    def term(count: int, x: float) -> float:
        if count == 0:
            return 0.0
        return count * math.log(x) if x > 0 else -math.inf

    return term(successes, q) + term(n - successes, 1 - q)


def log_mixture_by_integration(successes: int, n: int, p: float) -> float:
    """ln M_n(p) = ln ∫₀¹ q^S (1 − q)^(n − S) dq − ln p^S (1 − p)^(n − S).

    The integrand is scaled by its peak (at S/n) so it neither under- nor
    overflows; 40,000 Simpson intervals resolve the peak at n ≤ 5,000.
    """
    peak = log_likelihood(successes, n, successes / n)
    integral = simpson(lambda q: math.exp(log_likelihood(successes, n, q) - peak),
                       0.0, 1.0, 40_000)
    return math.log(integral) + peak - log_likelihood(successes, n, p)


def dense_average_run_length(disagree: float, up: int, threshold: int) -> float:
    """Solve (I − P) L = 1 on the states 0 … threshold − 1 by Gaussian
    elimination with partial pivoting on the full matrix."""
    size = threshold
    matrix = [[0.0] * size + [1.0] for _ in range(size)]
    for i in range(size):
        matrix[i][i] += 1.0
        matrix[i][max(i - 1, 0)] -= 1 - disagree
        if i + up < size:
            matrix[i][i + up] -= disagree
    for k in range(size):
        pivot = max(range(k, size), key=lambda r: abs(matrix[r][k]))
        matrix[k], matrix[pivot] = matrix[pivot], matrix[k]
        for r in range(k + 1, size):
            factor = matrix[r][k] / matrix[k][k]
            if factor:
                row, top = matrix[r], matrix[k]
                for c in range(k, size + 1):
                    row[c] -= factor * top[c]
    lengths = [0.0] * size
    for i in range(size - 1, -1, -1):
        known = sum(matrix[i][c] * lengths[c] for c in range(i + 1, size))
        lengths[i] = (matrix[i][size] - known) / matrix[i][i]
    return lengths[0]


def exact_alarm_within(disagree: float, up: int, threshold: int, horizon: int) -> float:
    """P(the CUSUM alarms within ``horizon`` comparisons), by pushing the exact
    distribution of the statistic forward one comparison at a time."""
    states = [1.0] + [0.0] * (threshold - 1)
    alarmed = 0.0
    for _ in range(horizon):
        moved = [0.0] * threshold
        for state, mass in enumerate(states):
            if mass:
                moved[max(state - 1, 0)] += mass * (1 - disagree)
                if state + up >= threshold:
                    alarmed += mass * disagree
                else:
                    moved[state + up] += mass * disagree
        states = moved
    return alarmed


# -- beta-binomial mixture -------------------------------------------------------------

CASES = [(95, 100), (930, 1000), (10, 20), (4800, 5000), (0, 50), (50, 50), (1, 3)]


@pytest.mark.parametrize(("successes", "n"), CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_beta_binomial_ends_are_where_the_mixture_reaches_one_over_alpha(
    successes: int, n: int, alpha: float,
) -> None:
    bounds = beta_binomial(successes, n, alpha)
    assert bounds.low is not None and bounds.high is not None
    level = math.log(1 / alpha)
    for end in (bounds.low, bounds.high):
        if 0.0 < end < 1.0:
            assert log_mixture_by_integration(successes, n, end) == pytest.approx(level, abs=1e-6)
    assert bounds.low <= successes / n <= bounds.high


def test_beta_binomial_reaches_zero_and_one_when_the_mixture_stays_below_the_level() -> None:
    level = math.log(1 / 0.05)
    assert log_mixture_by_integration(0, 50, 0.0) < level
    assert log_mixture_by_integration(50, 50, 1.0) < level
    assert beta_binomial(0, 50, 0.05).low == 0.0
    assert beta_binomial(50, 50, 0.05).high == 1.0


@pytest.mark.parametrize(("successes", "n"), [(95, 100), (930, 1000), (470, 500)])
def test_low_at_least_and_high_below_agree_with_the_integrated_mixture(
    successes: int, n: int,
) -> None:
    alpha, level = 0.05, math.log(1 / 0.05)
    centre = successes / n
    for step in range(1, 40):
        threshold = step / 40
        outside = log_mixture_by_integration(successes, n, threshold)
        if abs(outside - level) < 1e-3:
            continue  # too close to the end to call either way
        beyond = outside > level
        assert beta_binomial_low_at_least(successes, n, threshold, alpha) is (
            beyond and threshold < centre)
        assert beta_binomial_high_below(successes, n, threshold, alpha) is (
            beyond and threshold > centre)


def test_low_at_least_matches_the_bisected_end() -> None:
    for successes, n in itertools.product(range(80, 101, 2), (100,)):
        low = beta_binomial(successes, n, 0.05).low
        assert low is not None
        assert beta_binomial_low_at_least(successes, n, low - 1e-9, 0.05)
        assert not beta_binomial_low_at_least(successes, n, low + 1e-9, 0.05)


def test_no_data_gives_no_bounds() -> None:
    assert beta_binomial(0, 0, 0.05) == Bounds(None, None)
    assert normal_mixture(0, 0, 0.05) == Bounds(None, None)
    assert not beta_binomial_low_at_least(0, 0, 0.5, 0.05)


@pytest.mark.parametrize(("successes", "n", "alpha"), [(5, 4, 0.05), (-1, 4, 0.05),
                                                       (2, 4, 0.0), (2, 4, 1.0)])
def test_impossible_counts_and_levels_are_refused(successes: int, n: int, alpha: float) -> None:
    with pytest.raises(ValueError):
        beta_binomial(successes, n, alpha)
    with pytest.raises(ValueError):
        normal_mixture(successes, n, alpha)


# -- normal mixture --------------------------------------------------------------------


def howard_radius(n: int, alpha: float, rho: float) -> float:
    return math.sqrt((n / 4 + rho) * (math.log(1 + n / (4 * rho)) + 2 * math.log(1 / alpha))) / n


def howard_rho(tuning: int, alpha: float) -> float:
    level = math.log(1 / alpha)
    return (tuning / 4) / (2 * level + math.log(1 + 2 * level))


@pytest.mark.parametrize(("successes", "n", "alpha", "tuning"),
                         [(95, 100, 0.05, 500), (940, 1000, 0.05, 500), (470, 500, 0.01, 200),
                          (19_000, 20_000, 0.05, 5000)])
def test_normal_mixture_radius_is_the_formula(
    successes: int, n: int, alpha: float, tuning: int,
) -> None:
    radius = howard_radius(n, alpha, howard_rho(tuning, alpha))
    bounds = normal_mixture(successes, n, alpha, tuning)
    assert bounds.low == pytest.approx(successes / n - radius, abs=1e-12)
    assert bounds.high == pytest.approx(min(1.0, successes / n + radius), abs=1e-12)


@pytest.mark.parametrize("n", [100, 500, 3000])
def test_normal_mixture_martingale_is_one_over_alpha_at_the_end(n: int) -> None:
    """∫ exp(λ·s − λ²·V/2) N(λ; 0, 1/ρ) dλ = 1/α at s = n · radius, V = n/4."""
    alpha, tuning = 0.05, 500
    bounds = normal_mixture(round(0.95 * n), n, alpha, tuning)
    assert bounds.low is not None
    deviation = n * (round(0.95 * n) / n - bounds.low)
    rho, variance = howard_rho(tuning, alpha), n / 4

    def integrand(lam: float) -> float:
        return math.exp(lam * deviation - lam * lam * (variance + rho) / 2) * math.sqrt(
            rho / (2 * math.pi))

    centre, spread = deviation / (variance + rho), 1 / math.sqrt(variance + rho)
    mixture = simpson(integrand, centre - 14 * spread, centre + 14 * spread, 4000)
    assert mixture == pytest.approx(1 / alpha, rel=1e-8)


def test_normal_mixture_is_tightest_near_its_tuning_count() -> None:
    alpha, tuning = 0.05, 500
    rho = howard_rho(tuning, alpha)
    best = min(howard_radius(tuning, alpha, rho * k / 100) for k in range(10, 1000))
    bounds = normal_mixture(475, tuning, alpha, tuning)
    assert bounds.low is not None
    assert 0.95 - bounds.low == pytest.approx(best, rel=1e-3)


def test_normal_mixture_clips_to_the_unit_interval() -> None:
    assert normal_mixture(10, 10, 0.05) .high == 1.0
    assert normal_mixture(0, 10, 0.05).low == 0.0


def test_confidence_sequence_dispatches_on_the_method() -> None:
    assert confidence_sequence(95, 100, 0.05) == one_sided_bounds(95, 100, 0.05)
    assert confidence_sequence(95, 100, 0.05, Method.BETA_BINOMIAL) == beta_binomial(
        95, 100, 0.05)
    assert confidence_sequence(95, 100, 0.05, Method.NORMAL_MIXTURE, tuning=200) == (
        normal_mixture(95, 100, 0.05, 200))


# -- average run length -------------------------------------------------------------


@pytest.mark.parametrize("q", [0.05, 0.3, 0.5, 1.0])
def test_run_length_with_closed_forms(q: float) -> None:
    # Threshold 1, or up ≥ threshold: the first disagreement alarms.
    assert average_run_length(q, 1, 1) == pytest.approx(1 / q)
    assert average_run_length(q, 3, 2) == pytest.approx(1 / q)
    # Threshold 2, up 1: two disagreements in a row, L = 1/q + 1/q².
    assert average_run_length(q, 1, 2) == pytest.approx((1 + q) / q**2)
    # Threshold 3, up 2, by hand from L0 = 1 + q·L2 + (1−q)·L0,
    # L1 = 1 + (1−q)·L0, L2 = 1 + (1−q)·L1.
    assert average_run_length(q, 2, 3) == pytest.approx((1 + 2 * q - q * q) / (q * q * (2 - q)))


@pytest.mark.parametrize(("q", "up", "threshold"),
                         [(0.05, 8, 77), (0.05, 8, 76), (0.2, 8, 77), (0.1, 6, 113), (0.3, 1, 20)])
def test_run_length_matches_a_dense_solve(q: float, up: int, threshold: int) -> None:
    assert average_run_length(q, up, threshold) == pytest.approx(
        dense_average_run_length(q, up, threshold), rel=1e-7)


@pytest.mark.parametrize(("q", "threshold"), [(0.3, 20), (0.1, 8), (0.45, 60)])
def test_run_length_of_single_steps_is_a_sum_of_passage_times(q: float, threshold: int) -> None:
    # With up = 1 the statistic is a reflected walk: from k it first reaches
    # k + 1 after t_k = 1/q + (1 − q)/q · t_(k−1) comparisons on average, t_0 = 1/q.
    passage, total = 1 / q, 1 / q
    for _ in range(1, threshold):
        passage = 1 / q + (1 - q) / q * passage
        total += passage
    assert average_run_length(q, 1, threshold) == pytest.approx(total, rel=1e-7)


def test_run_length_without_disagreements_is_infinite() -> None:
    assert average_run_length(0.0, 8, 77) == math.inf


@pytest.mark.parametrize(("q", "up", "threshold"), [(-0.1, 1, 2), (1.1, 1, 2), (0.1, 0, 2),
                                                    (0.1, 1, 0)])
def test_run_length_refuses_nonsense(q: float, up: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        average_run_length(q, up, threshold)


# -- CUSUM ------------------------------------------------------------------------------

A, D = True, False  # an agreement, a disagreement
DETECTOR = Cusum(healthy=0.95, degraded=0.80, up=8, threshold=20)


@pytest.mark.parametrize(
    ("sequence", "start", "alarm", "statistic", "seen"),
    [
        ([D, D, D], 0, 3, 24, 3),                            # 8, 16, 24
        ([D, D, A, A, A, A, D], 0, 7, 20, 7),                # 8, 16, 15 … 12, 20: alarms at 20
        ([D] + [A] * 10 + [D, D], 0, None, 16, 13),          # back to 0 after 8, never below
        ([A, A, D, A, D], 0, None, 15, 5),                   # 0, 0, 8, 7, 15
        ([D], 15, 1, 23, 1),                                 # a running start
        ([A] * 5 + [D, D] + [A] * 3 + [D], 0, 11, 21, 11),   # 8, 16, 15, 14, 13, 21
    ],
)
def test_cusum_run_alarms_where_worked_out_by_hand(
    sequence: Sequence[bool], start: int, alarm: int | None, statistic: int, seen: int,
) -> None:
    result = DETECTOR.run(sequence, start=start)
    assert (result.alarmed_at, result.statistic, result.seen) == (alarm, statistic, seen)


def test_cusum_run_stops_at_the_first_alarm() -> None:
    stream = iter([D, D, D, A, A])
    assert DETECTOR.run(stream).alarmed_at == 3
    assert list(stream) == [A, A]


def test_design_rounds_the_likelihood_ratio_and_takes_the_smallest_threshold() -> None:
    cusum = Cusum.design(healthy=0.95, degraded=0.80, false_alarm=0.01, horizon=100_000)
    # ln(0.20/0.05) / ln(0.95/0.80) = 1.386 / 0.172 = 8.07
    assert cusum.up == 8
    target = 100_000 / -math.log(1 - 0.01)
    assert dense_average_run_length(0.05, 8, cusum.threshold) >= target
    assert dense_average_run_length(0.05, 8, cusum.threshold - 1) < target


def test_false_alarm_figure_is_close_to_the_exact_chance() -> None:
    cusum = Cusum.design(healthy=0.9, degraded=0.7, false_alarm=0.05, horizon=5000)
    exact = exact_alarm_within(0.1, cusum.up, cusum.threshold, 5000)
    assert cusum.false_alarm_within(5000) == pytest.approx(exact, rel=0.05)
    assert exact <= 0.05
    arl = dense_average_run_length(0.1, cusum.up, cusum.threshold)
    assert cusum.false_alarm_within(5000) == pytest.approx(1 - math.exp(-5000 / arl), rel=1e-7)


def test_false_alarms_grow_as_agreement_falls_below_healthy() -> None:
    cusum = Cusum.design(healthy=0.95, degraded=0.80, false_alarm=0.01, horizon=100_000)
    figures = [cusum.false_alarm_within(100_000, a) for a in (0.96, 0.95, 0.94, 0.93)]
    assert figures == sorted(figures)
    assert figures[0] < 0.01 and figures[1] <= 0.01 < figures[2]


def test_mean_delay_is_the_run_length_at_the_degraded_rate() -> None:
    cusum = Cusum.design(healthy=0.95, degraded=0.80, false_alarm=0.01, horizon=100_000)
    assert cusum.mean_delay(0.80) == pytest.approx(
        dense_average_run_length(0.2, cusum.up, cusum.threshold), rel=1e-9)


def test_design_of_close_rates_keeps_the_healthy_drift_negative_and_is_quick() -> None:
    # 0.9 → 0.89 rounds the ratio (8.53) up to 9, which does not drift down at 0.9.
    cusum = Cusum.design(healthy=0.9, degraded=0.89, false_alarm=0.01, horizon=100_000)
    assert cusum.up == 8
    assert cusum.up * 0.1 < 0.9


@pytest.mark.parametrize(
    ("healthy", "degraded", "false_alarm", "horizon"),
    [(0.8, 0.9, 0.01, 100), (0.9, 0.9, 0.01, 100), (0.9, 0.8, 0.0, 100), (0.9, 0.8, 1.0, 100),
     (0.9, 0.8, 0.01, 0), (0.5, 0.3, 0.01, 100)],
)
def test_design_refuses_what_it_cannot_build(
    healthy: float, degraded: float, false_alarm: float, horizon: int,
) -> None:
    with pytest.raises(ValueError):
        Cusum.design(healthy=healthy, degraded=degraded, false_alarm=false_alarm,
                     horizon=horizon)


# -- one-sided mixtures ---------------------------------------------------------------


def binomial_upper_tail(a: int, b: int, x: float) -> float:
    """I_x(a, b) for whole a, b: the chance of at least a successes in a + b − 1 trials."""
    n = a + b - 1
    return sum(math.comb(n, k) * x**k * (1 - x) ** (n - k) for k in range(a, n + 1))


@pytest.mark.parametrize(("a", "b", "x"), [(3, 5, 0.2), (50, 4, 0.9), (900, 60, 0.93),
                                           (5, 200, 0.01), (1, 1, 0.5), (400, 2, 0.999)])
def test_the_incomplete_beta_matches_the_binomial_sum(a: int, b: int, x: float) -> None:
    assert math.exp(_log_regularised_beta(x, a, b)) == pytest.approx(
        binomial_upper_tail(a, b, x), rel=1e-9)


def above_by_integration(s: float, n: int, t: float, grid: int = 40_000) -> float:
    logs = [s * math.log(q / t) + (n - s) * math.log((1 - q) / (1 - t))
            for q in (t + (i + 0.5) * (1 - t) / grid for i in range(grid))]
    top = max(logs)
    return top + math.log(sum(math.exp(v - top) for v in logs) / grid)


@pytest.mark.parametrize(("s", "n", "t"), [(95, 100, 0.9), (40, 50, 0.9), (9.5, 10, 0.8),
                                           (2700, 2900, 0.92), (0, 20, 0.5)])
def test_the_upper_mixture_is_the_integral_it_is_defined_as(s: float, n: int, t: float) -> None:
    assert log_above(s, n, t) == pytest.approx(above_by_integration(s, n, t), abs=1e-6)


def test_the_lower_mixture_mirrors_the_upper_one() -> None:
    assert log_below(10, 100, 0.2) == pytest.approx(log_above(90, 100, 0.8))


def test_the_one_sided_test_errs_at_most_alpha_at_the_threshold_under_continuous_monitoring(
) -> None:
    """Exact: the chance that a candidate at the threshold is ever shown above it, looking
    after every comparison up to 2,000, by dynamic programming over the successes."""
    t, alpha, horizon = 0.9, 0.05, 2000
    alive = {0: 1.0}  # successes → probability, over paths not yet shown above
    crossed = 0.0
    verdicts: dict[tuple[int, int], int] = {}
    for n in range(1, horizon + 1):
        step: dict[int, float] = {}
        for k, mass in alive.items():
            step[k + 1] = step.get(k + 1, 0.0) + mass * t
            step[k] = step.get(k, 0.0) + mass * (1 - t)
        alive = {}
        for k, mass in step.items():
            verdict = verdicts.setdefault((k, n), one_sided(k, n, t, alpha))
            if verdict == 1:
                crossed += mass
            else:
                alive[k] = mass
    assert 0.001 < crossed <= alpha


def test_values_between_0_and_1_are_accepted_as_means() -> None:
    assert one_sided(95.5, 100, 0.8, 0.05) == 1
    assert log_above(95.5, 100, 0.8) == pytest.approx(above_by_integration(95.5, 100, 0.8),
                                                      abs=1e-6)


def test_the_one_sided_bounds_are_where_each_test_just_decides() -> None:
    bounds = one_sided_bounds(95, 100, 0.05)
    assert bounds.low is not None and bounds.high is not None
    assert log_above(95, 100, bounds.low) == pytest.approx(math.log(20), abs=1e-3)
    assert log_below(95, 100, bounds.high) == pytest.approx(math.log(20), abs=1e-3)
    # Narrower below than the two-sided mixture's, which spends α on both sides.
    assert bounds.low > (beta_binomial(95, 100, 0.05).low or 1.0)


# -- the forward detector ---------------------------------------------------------------


def test_advancing_in_pieces_equals_advancing_at_once() -> None:
    rng = random.Random(3)
    detector = Cusum.design(healthy=0.95, degraded=0.8, false_alarm=0.01, horizon=500)
    agreements = [rng.random() < 0.93 for _ in range(3000)]
    whole = detector.advance(DetectorState(), agreements)
    state = DetectorState()
    for start in range(0, 3000, 137):
        state = detector.advance(state, agreements[start:start + 137])
    assert state == whole


def test_the_budget_renews_every_horizon_with_half_the_chance() -> None:
    detector = Cusum.design(healthy=0.95, degraded=0.8, false_alarm=0.01, horizon=1000)
    for epoch in range(4):
        threshold = detector.threshold_at(epoch * 1000 + 5)
        target = -1000 / math.log1p(-0.01 / 2**epoch)
        assert average_run_length(0.05, detector.up, threshold) >= target
        assert average_run_length(0.05, detector.up, threshold - 1) < target
    assert detector.threshold_at(999) == detector.threshold < detector.threshold_at(1000)


def test_an_alarm_is_final() -> None:
    detector = Cusum(healthy=0.95, degraded=0.8, up=8, threshold=16)
    alarmed = detector.advance(DetectorState(), [False, False])
    assert alarmed.alarmed_at == 2
    assert detector.advance(alarmed, [True] * 100) == alarmed
