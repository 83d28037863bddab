"""The named scenarios of ``shadow rollout simulate --scenario``: real traffic.

Each one simulates one way real traffic breaks the assumption of
independent, instantly labelled comparisons, and judges the same runs by
the new gate (what :mod:`rollout.gates` does) and by the naive one (what the
tool did before). The figures and their targets are in docs/statistics.md.
"""

from __future__ import annotations

from collections.abc import Callable

from rollout.simulate import ParameterError
from rollout.simulate_figures import ScenarioResult
from rollout.simulate_late import late_disagreements
from rollout.simulate_live import live_echo
from rollout.simulate_promotion import candidate_change, events_per_key, good, small_segment

Runner = Callable[[int, int], ScenarioResult]
"""``runner(runs, seed)``: a scenario at its documented settings."""


def _events(events: int) -> Runner:
    def run(runs: int, seed: int) -> ScenarioResult:
        return events_per_key(runs, seed, events=events)
    return run


SCENARIOS: dict[str, Runner] = {
    "events-per-key": _events(5),
    "events-per-key-10": _events(10),
    "late-disagreements": lambda runs, seed: late_disagreements(runs, seed),
    "small-segment": lambda runs, seed: small_segment(runs, seed),
    "good": lambda runs, seed: good(runs, seed),
    "live-echo": lambda runs, seed: live_echo(runs, seed),
    "candidate-change": lambda runs, seed: candidate_change(runs, seed),
}
"""Every named scenario, in the order ``all`` runs them."""


def run_scenarios(name: str, *, runs: int, seed: int) -> list[ScenarioResult]:
    """Run the scenario ``name`` (or every one, for ``all``).

    Raises:
        ParameterError: an unknown name, or ``runs`` not positive.
    """
    if runs < 1:
        raise ParameterError("runs", f"must be a positive count, got {runs}")
    if name == "all":
        return [run(runs, seed) for run in SCENARIOS.values()]
    if name not in SCENARIOS:
        raise ParameterError("scenario", f"must be one of {', '.join(SCENARIOS)} or all, "
                             f"got {name!r}")
    return [SCENARIOS[name](runs, seed)]
