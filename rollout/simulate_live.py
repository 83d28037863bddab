"""The named scenario ``live-echo``: the AI acts, and outcomes echo it.

A step at 100 % live keeps a ``holdout`` share routed apart from the AI.
Outcomes of live keys echo the AI (they always "agree"); only the holdout's
are independent. The rollback detector (``Cusum.design`` / ``advance``, the
functions the gates use) reads the independent labels only; the naive one
is the old CUSUM on every comparison, echoes included, with one fixed
threshold.

Detection after a drop is simulated. False rollbacks are computed exactly
(:func:`alarm_chance`): the CUSUM is a Markov chain on ``0 … threshold−1``,
and its state distribution is carried through each budget epoch by powers of
the transition matrix (squared 17 times for 100,000 comparisons), since a
million comparisons in 1,000 simulated runs would take minutes.
"""

from __future__ import annotations

import functools
import math
import operator
import random
from dataclasses import dataclass

from rollout.simulate import ParameterError, cusum_walk
from rollout.simulate_figures import Exact, Figure, Rate, ScenarioResult, median
from rollout.statistics import Cusum, DetectorState

Matrix = tuple[tuple[float, ...], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Live:
    """The live step and the detector's design.

    Raises:
        ParameterError: a value out of range (naming it).
    """

    holdout: float = 0.05
    healthy: float = 0.95
    degraded: float = 0.80
    false_alarm: float = 0.01
    horizon: int = 100_000
    good: float = 0.95
    """True agreement before the drop."""
    drop_to: float = 0.80
    before_drop: int = 1_000
    """Independent comparisons at ``good`` before the drop."""
    watch: int = 10_000
    """Independent comparisons watched after the drop; no alarm by then is 'never'."""
    long: int = 1_000_000
    """Independent comparisons of the long false-rollback figure."""

    def __post_init__(self) -> None:
        for name in ("holdout", "false_alarm"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ParameterError(name, f"must be between 0 and 1 (exclusive), got {value}")
        for name in ("good", "drop_to"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParameterError(name, f"must be between 0 and 1, got {value}")
        for name in ("horizon", "watch", "long"):
            if getattr(self, name) < 1:
                raise ParameterError(name, f"must be a positive count, got {getattr(self, name)}")

    def detector(self) -> Cusum:
        try:
            return Cusum.design(healthy=self.healthy, degraded=self.degraded,
                                false_alarm=self.false_alarm, horizon=self.horizon)
        except ValueError as exc:
            raise ParameterError("healthy", f"admits no detector: {exc}") from exc


# -- exact false-alarm chances ---------------------------------------------------------


def alarm_chance(cusum: Cusum, disagree: float, comparisons: int, *, renew: bool = True) -> float:
    """The chance that ``cusum``, fed ``comparisons`` at disagreement rate ``disagree``
    from 0, alarms; with ``renew``, under :meth:`Cusum.threshold_at` (the threshold
    of each budget epoch), else under its first threshold throughout."""
    horizon = cusum.horizon if renew and cusum.horizon else comparisons
    states: list[float] = [1.0]
    done = 0
    while done < comparisons:
        length = min(horizon - done % horizon, comparisons - done)
        threshold = cusum.threshold_at(done) if renew else cusum.threshold
        if threshold < len(states):
            raise ValueError("thresholds must not fall from one epoch to the next")
        states = states + [0.0] * (threshold - len(states))
        states = _carry(states, disagree, cusum.up, threshold, length)
        done += length
    return max(0.0, 1.0 - math.fsum(states))


def _carry(states: list[float], disagree: float, up: int, threshold: int,
           steps: int) -> list[float]:
    """The state distribution after ``steps`` comparisons (alarmed mass dropped)."""
    bit = 0
    while steps:
        if steps & 1:
            states = _apply(states, _square(disagree, up, threshold, bit))
        steps >>= 1
        bit += 1
    return states


@functools.lru_cache(maxsize=256)
def _square(disagree: float, up: int, threshold: int, bit: int) -> Matrix:
    """The transition matrix to the power ``2^bit``, as columns."""
    if bit == 0:
        rows = [[0.0] * threshold for _ in range(threshold)]
        for state in range(threshold):
            rows[max(state - 1, 0)][state] += 1.0 - disagree  # stored as columns: [to][from]
            if state + up < threshold:
                rows[state + up][state] += disagree
        return tuple(tuple(row) for row in rows)
    half = _square(disagree, up, threshold, bit - 1)
    # half is stored by columns; rows of the product are half's rows times half.
    by_rows = tuple(zip(*half, strict=True))
    return tuple(tuple(sum(map(operator.mul, row, column)) for row in by_rows)
                 for column in half)


def _apply(states: list[float], columns: Matrix) -> list[float]:
    return [sum(map(operator.mul, states, column)) for column in columns]


# -- detection after a drop ---------------------------------------------------------------


def detection_delays(live: Live, cusum: Cusum, runs: int,
                     rng: random.Random) -> tuple[list[float], int]:
    """Independent comparisons after the drop until the detector alarms (infinite:
    not within ``watch``), over the runs that did not alarm before it; and how
    many runs alarmed before the drop."""
    uniform = rng.random
    before, after = 1.0 - live.good, 1.0 - live.drop_to
    delays: list[float] = []
    early = 0
    for _ in range(runs):
        state = cusum.advance(DetectorState(),
                              [uniform() >= before for _ in range(live.before_drop)])
        if state.alarmed_at is not None:
            early += 1
            continue
        delay = math.inf
        while state.seen - live.before_drop < live.watch:
            chunk = min(100, live.watch - (state.seen - live.before_drop))
            state = cusum.advance(state, [uniform() >= after for _ in range(chunk)])
            if state.alarmed_at is not None:
                delay = state.alarmed_at - live.before_drop
                break
        delays.append(delay)
    return delays, early


def naive_delays(live: Live, cusum: Cusum, runs: int, rng: random.Random) -> list[float]:
    """The old CUSUM on every comparison, echoes included (disagreement rate
    ``holdout · (1 − agreement)``), in independent comparisons after the drop
    (at the expected ``holdout`` share of all comparisons)."""
    fixed = Cusum(cusum.healthy, cusum.degraded, cusum.up, cusum.threshold)
    every = round(1 / live.holdout)
    before = live.holdout * (1.0 - live.good)
    after = live.holdout * (1.0 - live.drop_to)
    delays: list[float] = []
    for _ in range(runs):
        alarm, state = cusum_walk(rng.random, before, fixed, 0, live.before_drop * every)
        if alarm is not None:
            continue
        alarm, _ = cusum_walk(rng.random, after, fixed, state, live.watch * every)
        delays.append(math.inf if alarm is None else alarm * live.holdout)
    return delays


def live_echo(runs: int, seed: int, *, live: Live = Live()) -> ScenarioResult:
    """Detection of a drop, and false rollbacks, when live outcomes echo the AI."""
    if runs < 1:
        raise ParameterError("runs", f"must be a positive count, got {runs}")
    cusum = live.detector()
    root = random.Random(seed)
    gate_rng, naive_rng = random.Random(root.getrandbits(64)), random.Random(root.getrandbits(64))
    delays, early = detection_delays(live, cusum, runs, gate_rng)
    naive = naive_delays(live, cusum, runs, naive_rng)
    healthy = 1.0 - live.good
    echoed = live.holdout * healthy
    every = round(1 / live.holdout)
    fixed = Cusum(cusum.healthy, cusum.degraded, cusum.up, cusum.threshold)
    return ScenarioResult(
        name="live-echo", runs=runs, seed=seed,
        setting=(f"100 % live with a {live.holdout:.0%} holdout; live outcomes echo the AI; "
                 f"detector healthy {live.healthy:g}, degraded {live.degraded:g}, false alarm "
                 f"{live.false_alarm:g} per {live.horizon:,} (up {cusum.up}, threshold "
                 f"{cusum.threshold}); {live.before_drop:,} independent comparisons at "
                 f"{live.good:g}, then a drop to {live.drop_to:g}"),
        naive="the old CUSUM on every comparison, echoes included, one fixed threshold",
        figures=(
            Figure(what=f"median independent comparisons to rollback after the drop to "
                        f"{live.drop_to:g}", gate=median(delays, "comparisons"),
                   naive=median(naive, "comparisons"), target=200),
            Figure(what=f"alarm before the drop ({live.before_drop:,} at {live.good:g})",
                   gate=Rate(early, runs), naive=None),
            Figure(what=f"false rollback within {live.horizon:,} independent comparisons at "
                        f"{live.good:g} (exact)",
                   gate=Exact(alarm_chance(cusum, healthy, live.horizon)),
                   naive=Exact(alarm_chance(fixed, echoed, live.horizon * every, renew=False)),
                   target=live.false_alarm),
            Figure(what=f"false rollback within {live.long:,} independent comparisons at "
                        f"{live.good:g} (exact)",
                   gate=Exact(alarm_chance(cusum, healthy, live.long)),
                   naive=Exact(alarm_chance(fixed, healthy, live.long, renew=False)),
                   target=2 * live.false_alarm,
                   naive_is="the same detector on independent labels, threshold never renewed"),
        ),
    )
