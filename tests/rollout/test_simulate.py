"""The rollout simulator: its figures for the documented scenario, and its
mechanics against exact distributions computed here."""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable

import pytest

from rollout.simulate import (
    ParameterError,
    Scenario,
    SimulationResult,
    cusum_walk,
    simulate,
)
from rollout.statistics import Cusum, one_sided
from shadow.cli.simulate import add_arguments, run_command
from shadow.config.rollout import Method

# -- the documented scenario ------------------------------------------------------------


@pytest.fixture(scope="module")
def documented() -> SimulationResult:
    return simulate(Scenario(), runs=1000, seed=1)


def test_gate_rarely_promotes_a_candidate_at_the_threshold(documented: SimulationResult) -> None:
    assert documented.false_promotion_rate <= 0.05


def test_naive_gate_promotes_such_a_candidate_far_more_often(
    documented: SimulationResult,
) -> None:
    assert documented.naive_false_promotion_rate > 0.15


def test_gate_promotes_a_good_candidate_within_300_events(documented: SimulationResult) -> None:
    assert documented.gate.median_events <= 300
    assert documented.gate.promotions == 1000


def test_cusum_rarely_rolls_back_a_good_candidate(documented: SimulationResult) -> None:
    assert documented.false_rollback_rate <= 0.02


def test_cusum_rolls_back_within_200_events_of_a_drop(documented: SimulationResult) -> None:
    assert documented.rollback.median_events <= 200


def test_the_same_seed_gives_the_same_result() -> None:
    scenario = Scenario(horizon=5000, max_events=2000)
    first = simulate(scenario, runs=300, seed=7)
    assert simulate(scenario, runs=300, seed=7) == first
    assert simulate(scenario, runs=300, seed=8) != first


# -- mechanics against exact distributions ---------------------------------------------

SMALL = Scenario(
    alpha=0.2, check_every=60, max_events=1000,  # 16 batches of 60 and a last one of 40
    at_threshold=0.92, good=0.95,
    healthy=0.95, degraded=0.80, false_alarm=0.3, horizon=2000, before_drop=300,
)
RUNS = 4000


@pytest.fixture(scope="module")
def small() -> SimulationResult:
    return simulate(SMALL, runs=RUNS, seed=3)


def binomial_pmf(size: int, p: float) -> list[float]:
    return [math.comb(size, k) * p**k * (1 - p) ** (size - k) for k in range(size + 1)]


def wilson_low(successes: int, n: int, z: float) -> float:
    p, z2 = successes / n, z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre - half) / (1 + z2 / n)


def exact_first_promotion(
    scenario: Scenario, agreement: float, promotes: Callable[[int, int], bool],
) -> dict[int, float]:
    """P(the first promotion is at n compared events), for each checkpoint n,
    by carrying the distribution of agreements of the runs not yet promoted."""
    sizes = [scenario.check_every] * (scenario.max_events // scenario.check_every)
    if scenario.max_events % scenario.check_every:
        sizes.append(scenario.max_events % scenario.check_every)
    waiting, n, first = {0: 1.0}, 0, {}
    for size in sizes:
        pmf = binomial_pmf(size, agreement)
        moved: dict[int, float] = {}
        for successes, mass in waiting.items():
            for k, chance in enumerate(pmf):
                moved[successes + k] = moved.get(successes + k, 0.0) + mass * chance
        n += size
        first[n] = sum(mass for s, mass in moved.items() if promotes(s, n))
        waiting = {s: mass for s, mass in moved.items() if not promotes(s, n) and mass > 1e-16}
    return first


def exact_cusum_alarms(
    up: int, threshold: int, phases: list[tuple[float, int]],
) -> list[float]:
    """P(the first alarm is at comparison i), i = 1 …, for a CUSUM from 0 fed
    ``count`` comparisons at each ``disagree`` rate in turn."""
    states = [1.0] + [0.0] * (threshold - 1)
    alarms = []
    for disagree, count in phases:
        for _ in range(count):
            moved = [0.0] * threshold
            alarmed = 0.0
            for state, mass in enumerate(states):
                moved[max(state - 1, 0)] += mass * (1 - disagree)
                if state + up >= threshold:
                    alarmed += mass * disagree
                else:
                    moved[state + up] += mass * disagree
            states = moved
            alarms.append(alarmed)
    return alarms


def within_sampling_error(observed: float, exact: float, runs: int) -> bool:
    return abs(observed - exact) <= 4.5 * math.sqrt(exact * (1 - exact) / runs) + 1e-12


def median_is_consistent(median: float, cdf: Callable[[float], float], slack: float) -> bool:
    """The exact CDF crosses one half at the simulated median, up to sampling slack."""
    return cdf(median) >= 0.5 - slack and cdf(median - 1e-9) <= 0.5 + slack


def gate_promotes(successes: int, n: int) -> bool:
    # The default method: shown above the threshold by the one-sided mixture.
    return one_sided(successes, n, SMALL.threshold, SMALL.alpha) == 1


def naive_promotes(successes: int, n: int) -> bool:
    return wilson_low(successes, n, SMALL.naive_z) >= SMALL.threshold


@pytest.mark.parametrize("gate", ["gate", "naive"])
def test_false_promotions_match_the_exact_chance(small: SimulationResult, gate: str) -> None:
    promotes = gate_promotes if gate == "gate" else naive_promotes
    exact = sum(exact_first_promotion(SMALL, SMALL.at_threshold, promotes).values())
    observed = getattr(small, gate).false_promotions / RUNS
    assert 0.1 < exact < 0.9  # a check with teeth: neither rate is near 0 or 1
    assert within_sampling_error(observed, exact, RUNS), (observed, exact)


@pytest.mark.parametrize("gate", ["gate", "naive"])
def test_median_events_to_promotion_match_the_exact_distribution(
    small: SimulationResult, gate: str,
) -> None:
    promotes = gate_promotes if gate == "gate" else naive_promotes
    first = exact_first_promotion(SMALL, SMALL.good, promotes)

    def cdf(events: float) -> float:
        return sum(chance for n, chance in first.items() if n <= events)

    assert median_is_consistent(getattr(small, gate).median_events, cdf, 0.03)


def test_false_rollbacks_match_the_exact_chance(small: SimulationResult) -> None:
    exact = sum(exact_cusum_alarms(small.cusum.up, small.cusum.threshold,
                                   [(1 - SMALL.good, SMALL.horizon)]))
    assert 0.1 < exact < 0.9
    assert within_sampling_error(small.false_rollback_rate, exact, RUNS), (
        small.false_rollback_rate, exact)


def test_alarms_around_the_drop_match_the_exact_distribution(small: SimulationResult) -> None:
    alarms = exact_cusum_alarms(small.cusum.up, small.cusum.threshold,
                                [(1 - SMALL.good, SMALL.before_drop),
                                 (1 - SMALL.drop_to, SMALL.horizon)])
    before = sum(alarms[:SMALL.before_drop])
    assert within_sampling_error(small.rollback.alarms_before_drop / RUNS, before, RUNS)
    after = alarms[SMALL.before_drop:]

    def cdf(events: float) -> float:  # given no alarm before the drop
        return sum(after[:math.floor(events)]) / (1 - before)

    assert median_is_consistent(small.rollback.median_events, cdf, 0.03)


def scripted_uniforms(runs: list[int], disagree: float) -> Callable[[], float]:
    """Uniform draws that make the walk see these runs of agreements in turn:
    ln(1 − u) / ln(1 − q) = run + ½ floors to the run."""
    draws = iter([1 - (1 - disagree) ** (run + 0.5) for run in runs])
    return lambda: next(draws)


def test_walk_worked_by_hand() -> None:
    cusum = Cusum(healthy=0.95, degraded=0.80, up=8, threshold=20)
    # A A A D D (A × 10) D | A A A A: 8, 16, down to 6, 14, and 10 after the
    # four agreements that end the twenty comparisons.
    assert cusum_walk(scripted_uniforms([3, 0, 10, 10], 0.5), 0.5, cusum, 0, 20) == (None, 10)
    assert cusum_walk(scripted_uniforms([0, 0, 0], 0.5), 0.5, cusum, 0, 20) == (3, 24)
    assert cusum_walk(scripted_uniforms([25], 0.5), 0.5, cusum, 12, 20) == (None, 0)


def test_walk_agrees_with_feeding_every_comparison() -> None:
    rng = random.Random(2)
    cusum = Cusum(healthy=0.95, degraded=0.80, up=8, threshold=30)
    for _ in range(500):
        disagree, length, start = rng.uniform(0.05, 0.6), rng.randint(1, 60), rng.randint(0, 29)
        runs = [rng.randint(0, 9) for _ in range(70)]
        comparisons = [c for run in runs for c in [True] * run + [False]][:length]
        fed = cusum.run(comparisons, start=start)
        walked = cusum_walk(scripted_uniforms(runs, disagree), disagree, cusum, start, length)
        assert walked == (fed.alarmed_at, fed.statistic), (runs, length, start)


def test_the_state_at_the_drop_carries_over() -> None:
    # Five comparisons at 0.6 leave the statistic well above zero when the
    # drop comes, which shortens the way to the alarm.
    scenario = Scenario(good=0.6, before_drop=5, healthy=0.95, degraded=0.80, false_alarm=0.3,
                        horizon=2000, max_events=200)
    result = simulate(scenario, runs=RUNS, seed=5)
    alarms = exact_cusum_alarms(result.cusum.up, result.cusum.threshold,
                                [(0.4, 5), (1 - scenario.drop_to, scenario.horizon)])
    before = sum(alarms[:5])
    assert within_sampling_error(result.rollback.alarms_before_drop / RUNS, before, RUNS)

    def cdf(events: float) -> float:
        return sum(alarms[5:5 + math.floor(events)]) / (1 - before)

    assert median_is_consistent(result.rollback.median_events, cdf, 0.03)


def test_a_last_shorter_batch_makes_the_last_check_at_max_events() -> None:
    # A candidate that always agrees: the beta-binomial gate at 0.99 first passes
    # where ln M_n(0.99) = −ln(n + 1) − n·ln 0.99 reaches ln 20 (n = 990 …).
    scenario = Scenario(threshold=0.99, good=1.0, check_every=300, max_events=1000,
                        horizon=2000, method=Method.BETA_BINOMIAL)
    checks = [300, 600, 900, 1000]
    first = next(n for n in checks if -math.log(n + 1) - n * math.log(0.99) >= math.log(20))
    assert first == 1000
    result = simulate(scenario, runs=20, seed=1)
    assert result.gate.promotions == 20
    assert result.gate.median_events == first


def test_promotion_happens_at_a_check(small: SimulationResult) -> None:
    assert small.gate.median_events % SMALL.check_every == 0
    assert small.naive.median_events % SMALL.check_every == 0


# -- edge cases --------------------------------------------------------------------------


def test_a_candidate_that_never_promotes_has_no_median() -> None:
    result = simulate(Scenario(good=0.85, max_events=1000, horizon=2000), runs=50, seed=1)
    assert result.gate.promotions == 0
    assert result.gate.median_events == math.inf
    as_json = json.dumps(result.as_dict(), allow_nan=False)
    assert json.loads(as_json)["median_events_to_promotion"] is None


def test_a_perfect_candidate_never_rolls_back() -> None:
    result = simulate(Scenario(good=1.0, max_events=1000), runs=50, seed=1)
    assert result.false_rollback_rate == 0.0
    assert result.gate.promotions == 50


def test_normal_mixture_is_slower_to_promote(documented: SimulationResult) -> None:
    result = simulate(Scenario(method=Method.NORMAL_MIXTURE, horizon=1000), runs=200, seed=1)
    assert result.gate.median_events > documented.gate.median_events


@pytest.mark.parametrize(
    ("changes", "name"),
    [({"alpha": 1.5}, "alpha"), ({"threshold": 0.0}, "threshold"),
     ({"degraded": 0.97}, "degraded"), ({"healthy": 0.4, "degraded": 0.3}, "healthy"),
     ({"max_events": 50}, "max_events"), ({"check_every": 0}, "check_every"),
     ({"good": 1.2}, "good"), ({"alpha": math.nan}, "alpha"), ({"naive_z": -1.0}, "naive_z")],
)
def test_scenario_names_the_bad_field(changes: dict[str, float], name: str) -> None:
    with pytest.raises(ParameterError) as caught:
        Scenario(**changes)  # type: ignore[arg-type]
    assert caught.value.name == name


def test_runs_must_be_positive() -> None:
    with pytest.raises(ParameterError, match="runs"):
        simulate(Scenario(), runs=0)


# -- command line ------------------------------------------------------------------------


def command(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="shadow rollout simulate")
    add_arguments(parser)
    return run_command(parser.parse_args(list(argv)))


def test_json_has_every_figure_and_parameter() -> None:
    code, text = command("--runs", "20", "--seed", "4", "--format", "json", "--horizon", "3000",
                         "--method", "normal_mixture")
    assert code == 0
    figures = json.loads(text)
    expected = {
        "false_promotion_rate", "naive_false_promotion_rate", "median_events_to_promotion",
        "naive_median_events_to_promotion", "false_rollback_rate", "median_events_to_rollback",
        "runs", "seed", "cusum_up", "cusum_threshold", "threshold", "alpha", "method", "tuning",
        "check_every", "max_events", "at_threshold", "good", "healthy", "degraded",
        "false_alarm", "horizon", "drop_to", "before_drop", "naive_z",
    }
    assert expected <= figures.keys()
    assert (figures["runs"], figures["seed"], figures["horizon"]) == (20, 4, 3000)
    assert figures["method"] == "normal_mixture"


def test_table_shows_both_gates_and_the_targets() -> None:
    code, text = command("--runs", "20", "--horizon", "3000")
    assert code == 0
    for words in ("naive Wilson", "<= 5%", "<= 300", "<= 1%", "<= 200", "false rollback"):
        assert words in text


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["--degraded", "0.97"], "--degraded"), (["--alpha", "1.5"], "--alpha"),
     (["--alpha", "nan"], "--alpha"), (["--runs", "0"], "--runs"),
     (["--max-events", "50"], "--max-events"), (["--healthy", "0.45", "--degraded", "0.3"],
                                                 "--healthy")],
)
def test_bad_values_exit_2_with_one_line_naming_the_option(argv: list[str], option: str) -> None:
    code, text = command(*argv)
    assert code == 2
    assert "\n" not in text
    assert option in text
