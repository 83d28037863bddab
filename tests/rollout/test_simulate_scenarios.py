"""The named scenarios: their targets at the documented 1,000 runs and seed 1,
their mechanics against answers computed here, and docs/statistics.md's table
against a fresh simulation."""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from rollout.simulate import ParameterError
from rollout.simulate_figures import ScenarioResult
from rollout.simulate_late import Delays, _Window, late_disagreements
from rollout.simulate_live import Live, alarm_chance
from rollout.simulate_promotion import Draws, GateSetting, draw_keys, events_per_key
from rollout.simulate_scenarios import SCENARIOS
from rollout.statistics import (
    Cusum,
    DetectorState,
    average_run_length,
    beta_binomial_low_at_least,
    one_sided,
)
from shadow.cli.simulate import _measure, _target, add_arguments, run_command

DOC = Path(__file__).resolve().parents[2] / "docs" / "statistics.md"
RUNS, SEED = 1000, 1  # the documented figures


@functools.cache
def documented(name: str) -> ScenarioResult:
    return SCENARIOS[name](RUNS, SEED)


def figure(name: str, index: int) -> tuple[float, float]:
    f = documented(name).figures[index]
    assert f.naive is not None
    return f.gate.value, f.naive.value


# -- the targets -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["events-per-key", "events-per-key-10"])
def test_one_vote_per_key_keeps_false_promotion_within_5_percent(name: str) -> None:
    gate, naive = figure(name, 0)
    assert gate <= 0.05
    assert naive >= 0.25


def test_more_events_per_key_fool_the_naive_gate_more_often() -> None:
    assert figure("events-per-key-10", 0)[1] > figure("events-per-key", 0)[1] + 0.1


def test_late_disagreements_do_not_promote_a_candidate_below_the_threshold() -> None:
    gate, naive = figure("late-disagreements", 0)
    assert gate <= 0.05
    assert naive >= 0.5


def test_a_small_bad_segment_holds_the_promotion() -> None:
    gate, naive = figure("small-segment", 0)
    assert gate <= 0.05
    assert naive >= 0.8


def test_a_good_candidate_is_promoted_within_300_keys() -> None:
    gate, naive = figure("good", 0)
    assert gate <= 300 < naive
    assert documented("good").figures[1].gate.value == 1.0


def test_live_echo_is_caught_only_on_independent_labels() -> None:
    gate, naive = figure("live-echo", 0)
    assert gate <= 200
    assert naive == math.inf


def test_false_rollbacks_stay_within_budget_and_within_twice_it_for_ever() -> None:
    within_horizon = documented("live-echo").figures[2].gate.value
    gate, fixed = figure("live-echo", 3)
    assert within_horizon <= 0.01
    assert gate <= 0.02
    assert fixed >= 0.07  # the old detector's threshold, never renewed


def test_a_worse_new_version_is_not_promoted_after_the_old_one_was() -> None:
    old, _ = figure("candidate-change", 0)
    new, pooled = figure("candidate-change", 1)
    assert old >= 0.99
    assert new <= 0.05 < pooled


# -- mechanics against answers computed here -------------------------------------------------

SMALL = GateSetting(threshold=0.9, alpha=0.2, check_every=60, max_keys=1000)
SMALL_RUNS = 4000


def exact_first_pass(setting: GateSetting, agreement: float,
                     passes: Callable[[int, int], bool]) -> float:
    """P(a gate checked every ``check_every`` single-event keys passes by ``max_keys``),
    carrying the distribution of agreements of the runs that have not passed."""
    waiting, n, passed = {0: 1.0}, 0, 0.0
    while n < setting.max_keys:
        size = min(setting.check_every, setting.max_keys - n)
        pmf = [math.comb(size, k) * agreement**k * (1 - agreement) ** (size - k)
               for k in range(size + 1)]
        moved: dict[int, float] = {}
        for successes, mass in waiting.items():
            for k, chance in enumerate(pmf):
                moved[successes + k] = moved.get(successes + k, 0.0) + mass * chance
        n += size
        passed += sum(mass for s, mass in moved.items() if passes(s, n))
        waiting = {s: mass for s, mass in moved.items() if not passes(s, n) and mass > 1e-16}
    return passed


def within_sampling_error(observed: float, exact: float, runs: int) -> bool:
    return abs(observed - exact) <= 4.5 * math.sqrt(exact * (1 - exact) / runs) + 1e-12


def unit_gate(successes: int, n: int) -> bool:
    return one_sided(successes, n, SMALL.threshold, SMALL.alpha) == 1


def event_gate(successes: int, n: int) -> bool:
    return beta_binomial_low_at_least(successes, n, SMALL.threshold, SMALL.alpha)


def test_one_event_per_key_is_the_plain_per_unit_gate() -> None:
    result = events_per_key(SMALL_RUNS, 3, events=1, agreement=0.92, setting=SMALL)
    exact = exact_first_pass(SMALL, 0.92, unit_gate)
    naive_exact = exact_first_pass(SMALL, 0.92, event_gate)
    f = result.figures[0]
    assert 0.1 < exact < 0.9 and 0.1 < naive_exact < 0.9  # checks with teeth
    assert within_sampling_error(f.gate.value, exact, SMALL_RUNS), (f.gate.value, exact)
    assert f.naive is not None
    assert within_sampling_error(f.naive.value, naive_exact, SMALL_RUNS)


def test_without_label_delays_the_late_gate_is_the_plain_per_unit_gate() -> None:
    result = late_disagreements(SMALL_RUNS // 4, 5, agreement=0.92, delays=Delays(mean_delay=0),
                                setting=SMALL)
    exact = exact_first_pass(SMALL, 0.92, unit_gate)
    observed = result.figures[0].gate.value
    assert within_sampling_error(observed, exact, SMALL_RUNS // 4), (observed, exact)


@pytest.mark.parametrize("correlation", [0.0, 0.4, 1.0])
def test_correlation_makes_later_events_repeat_the_first(correlation: float) -> None:
    draws, events, agreement, keys = Draws(random.Random(7)), 4, 0.7, 20_000
    same = 0
    for _ in range(keys):
        first, agreeing = draw_keys(draws, 1, events, correlation, agreement)
        later_agreeing = agreeing - first
        same += later_agreeing if first else (events - 1) - later_agreeing
    share = same / (keys * (events - 1))
    expected = correlation + (1 - correlation) * (agreement**2 + (1 - agreement) ** 2)
    assert abs(share - expected) < 0.01, (share, expected)


def test_the_first_event_agrees_at_the_true_rate_whatever_the_correlation() -> None:
    draws = Draws(random.Random(8))
    first = sum(draw_keys(draws, 1, 5, 0.5, 0.6)[0] for _ in range(20_000)) / 20_000
    assert abs(first - 0.6) < 0.015


def test_each_epochs_threshold_is_the_smallest_whose_run_length_meets_its_budget() -> None:
    live = Live()
    cusum = live.detector()
    for epoch in range(5):
        target = -live.horizon / math.log1p(-live.false_alarm / 2**epoch)
        threshold = cusum.up
        while average_run_length(1 - cusum.healthy, cusum.up, threshold) < target:
            threshold += 1
        assert cusum.threshold_at(epoch * live.horizon) == threshold
        assert cusum.threshold_at((epoch + 1) * live.horizon - 1) == threshold


def brute_force_alarm(cusum: Cusum, disagree: float, comparisons: int) -> float:
    """One comparison at a time, with the threshold of the comparison's epoch."""
    states = {0: 1.0}
    alarmed = 0.0
    for seen in range(comparisons):
        threshold = cusum.threshold_at(seen)
        moved: dict[int, float] = {}
        for state, mass in states.items():
            down = max(state - 1, 0)
            moved[down] = moved.get(down, 0.0) + mass * (1 - disagree)
            if state + cusum.up >= threshold:
                alarmed += mass * disagree
            else:
                moved[state + cusum.up] = moved.get(state + cusum.up, 0.0) + mass * disagree
        states = moved
    return alarmed


SHORT = Cusum.design(healthy=0.9, degraded=0.7, false_alarm=0.3, horizon=150)


def test_exact_false_alarms_match_feeding_the_chain_one_comparison_at_a_time() -> None:
    assert SHORT.threshold_at(3 * 150) > SHORT.threshold  # the epochs do differ
    for comparisons in (150, 451, 700):
        expected = brute_force_alarm(SHORT, 0.1, comparisons)
        assert abs(alarm_chance(SHORT, 0.1, comparisons) - expected) < 1e-9


def test_exact_false_alarms_match_the_detector_the_gates_run() -> None:
    rng = random.Random(11)
    alarms = 0
    for _ in range(SMALL_RUNS):
        state = SHORT.advance(DetectorState(), [rng.random() >= 0.1 for _ in range(600)])
        alarms += state.alarmed_at is not None
    exact = alarm_chance(SHORT, 0.1, 600)
    assert 0.1 < exact < 0.9
    assert within_sampling_error(alarms / SMALL_RUNS, exact, SMALL_RUNS), (alarms, exact)


def test_a_fixed_threshold_alarms_more_often_than_a_renewed_one() -> None:
    assert alarm_chance(SHORT, 0.1, 700, renew=False) > alarm_chance(SHORT, 0.1, 700)


def test_the_window_is_the_nearest_rank_quantile_of_the_delays() -> None:
    rng = random.Random(4)
    window = _Window(5000, 0.95)
    delays: list[int] = []
    for _ in range(40):
        for _ in range(rng.randint(1, 60)):
            delay = int(rng.expovariate(1 / 400))
            if delay <= 5000:
                window.add(delay)
                delays.append(delay)
        ordered = sorted(delays)
        rank = math.ceil(0.95 * len(ordered))  # the smallest d with ≥ 95 % at or below it
        assert window.value() == ordered[rank - 1]


# -- bad values and the command line ------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "name"),
    [(lambda: events_per_key(10, 1, correlation=1.5), "correlation"),
     (lambda: events_per_key(0, 1), "runs"),
     (lambda: GateSetting(alpha=0.0), "alpha"),
     (lambda: Delays(min_labelled=2.0), "min_labelled"),
     (lambda: Live(holdout=0.0), "holdout")],
)
def test_bad_values_name_the_parameter(run: Callable[[], object], name: str) -> None:
    with pytest.raises(ParameterError) as caught:
        run()
    assert caught.value.name == name


def command(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="shadow rollout simulate")
    add_arguments(parser)
    return run_command(parser.parse_args(list(argv)))


def test_a_named_scenario_prints_gate_naive_target_and_met() -> None:
    code, text = command("--scenario", "good", "--runs", "50")
    assert code == 0
    assert "Scenario good: 50 runs, seed 0" in text
    for words in ("gate", "naive", "<= 300", "met"):
        assert words in text


def test_json_lists_every_scenario_with_its_figures() -> None:
    code, text = command("--scenario", "all", "--runs", "20", "--format", "json")
    assert code == 0
    out = json.loads(text)
    assert [s["scenario"] for s in out["scenarios"]] == list(SCENARIOS)
    for scenario in out["scenarios"]:
        assert scenario["figures"]
        for f in scenario["figures"]:
            assert {"what", "gate", "naive", "target", "met"} <= f.keys()


@pytest.mark.parametrize(("argv", "option"),
                         [(["--scenario", "nope"], "--scenario"),
                          (["--scenario", "all", "--runs", "0"], "--runs")])
def test_bad_scenario_values_exit_2_naming_the_option(argv: list[str], option: str) -> None:
    code, text = command(*argv)
    assert code == 2
    assert "\n" not in text
    assert text.startswith(option)


# -- docs/statistics.md ---------------------------------------------------------------------


def test_the_documented_table_is_what_a_fresh_simulation_gives() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert f"shadow rollout simulate --scenario all --runs {RUNS} --seed {SEED}" in doc
    for name in SCENARIOS:
        for f in documented(name).figures:
            naive = _measure(f.naive) if f.naive is not None else ""
            met = "" if f.met is None else ("yes" if f.met else "NO")
            row = f"| `{name}` | {f.what} | {_measure(f.gate)} | {naive} | {_target(f)} | {met} |"
            assert row in doc, row

