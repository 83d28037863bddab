"""Simulated rollouts: what the gates and the rollback detector do on known truth.

Each run draws comparisons (agree or not) from a candidate whose true
agreement is known and watches the rollout statistics react:

* **False promotion**: a candidate exactly at the promotion threshold (not
  good enough) is checked every ``check_every`` comparisons, up to
  ``max_events``; the share of runs that promote is the false-promotion rate.
  The same stream is judged by the anytime-valid gate and by a naive gate
  (a one-sided Wilson bound checked again and again) side by side.
* **Time to promotion**: the same for a good candidate; the median number of
  compared events at which it promotes.
* **False rollback**: a CUSUM designed for the scenario watches ``horizon``
  comparisons of the good candidate; the share of runs that alarm.
* **Time to rollback**: the CUSUM watches ``before_drop`` comparisons of the
  good candidate, then agreement drops to ``drop_to``; the median number of
  comparisons after the drop until the alarm.

Pure Python and deterministic for a seed. Two shortcuts keep 1,000 runs
within seconds, both exact in distribution: a batch of comparisons is one
binomial draw (inverse CDF over a precomputed table), and the CUSUM jumps
from disagreement to disagreement, the run of agreements in between being
geometric. Going down never alarms, so only a disagreement can.
"""

from __future__ import annotations

import bisect
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from rollout.statistics import (
    Cusum,
    beta_binomial_low_at_least,
    normal_mixture,
    one_sided,
)
from shadow.config.rollout import Method
from shadow.core.fixed_sample import wilson

# The product's targets for the documented scenario (docs/statistics.md).
TARGET_FALSE_PROMOTION = 0.05
TARGET_EVENTS_TO_PROMOTION = 300
TARGET_FALSE_ROLLBACK = 0.01
TARGET_EVENTS_TO_ROLLBACK = 200


class ParameterError(ValueError):
    """A simulation parameter out of range. ``name`` is the parameter (a
    :class:`Scenario` field, ``runs`` or ``seed``), ``problem`` what is wrong."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """What is simulated; the defaults are the documented scenario.

    Raises:
        ParameterError: a value is out of range (naming the field).
    """

    threshold: float = 0.90        # promotion threshold on agreement
    alpha: float = 0.05            # per-step error of the confidence sequence
    method: Method = Method.ONE_SIDED
    tuning: int = 500              # normal mixture tuning count
    check_every: int = 100         # compared events between gate checks
    max_events: int = 20_000       # a run that has not promoted by then did not promote
    at_threshold: float = 0.90     # true agreement of the "not good enough" candidate
    good: float = 0.95             # true agreement of the good candidate
    healthy: float = 0.95          # CUSUM design: healthy agreement
    degraded: float = 0.80         # CUSUM design: degraded agreement it must catch
    false_alarm: float = 0.01      # CUSUM design budget ...
    horizon: int = 100_000         # ... over this many compared events
    drop_to: float = 0.80          # true agreement after the drop, while live
    before_drop: int = 1_000       # healthy compared events (at `good`) before the drop
    naive_z: float = 1.6448536269514722  # one-sided 95 % Wilson lower bound

    def __post_init__(self) -> None:
        if not isinstance(self.method, Method):
            raise ParameterError("method", f"must be one of {_method_names()}, got {self.method!r}")
        for name in ("threshold", "alpha", "healthy", "false_alarm"):
            _require(0.0 < getattr(self, name) < 1.0, name, "must be between 0 and 1 (exclusive)",
                     getattr(self, name))
        for name in ("at_threshold", "good", "drop_to"):
            _require(0.0 <= getattr(self, name) <= 1.0, name, "must be between 0 and 1",
                     getattr(self, name))
        # Below that, no CUSUM in whole steps drifts down at the healthy rate.
        _require(self.healthy > 0.5, "healthy", "must be above 0.5", self.healthy)
        _require(0.0 < self.degraded < self.healthy, "degraded",
                 f"must be above 0 and below healthy ({self.healthy})", self.degraded)
        for name in ("tuning", "check_every", "horizon"):
            value = getattr(self, name)
            _require(value >= 1, name, "must be a positive count", value)
        _require(self.before_drop >= 0, "before_drop", "must not be negative", self.before_drop)
        _require(self.max_events >= self.check_every, "max_events",
                 f"must be at least check_every ({self.check_every})", self.max_events)
        _require(0.0 < self.naive_z < math.inf, "naive_z", "must be positive", self.naive_z)


def _require(holds: bool, name: str, problem: str, value: object) -> None:
    # NaN fails every comparison, so it lands here too.
    if not holds:
        raise ParameterError(name, f"{problem}, got {value}")


def _method_names() -> str:
    return ", ".join(m.value for m in Method)


@dataclass(frozen=True, slots=True)
class GateOutcome:
    """What one promotion gate did over the runs."""

    false_promotions: int
    """Runs at ``at_threshold`` that promoted within ``max_events``."""
    promotions: int
    """Runs at ``good`` that promoted within ``max_events``."""
    median_events: float
    """Median compared events to promotion at ``good`` over *all* runs, a run
    that never promoted counting as infinitely many (so the median is
    infinite when half the runs or more never promote)."""


@dataclass(frozen=True, slots=True)
class RollbackOutcome:
    """What the CUSUM did over the runs."""

    false_rollbacks: int
    """Runs at ``good`` that alarmed within ``horizon`` comparisons."""
    alarms_before_drop: int
    """Runs that alarmed during the ``before_drop`` comparisons at ``good``."""
    median_events: float
    """Median comparisons after the drop to the alarm, over the runs that
    reached the drop; a run with no alarm within ``horizon`` comparisons after
    it counts as infinitely many."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    scenario: Scenario
    runs: int
    seed: int
    cusum: Cusum
    gate: GateOutcome
    """The anytime-valid gate (``scenario.method``)."""
    naive: GateOutcome
    """The one-sided Wilson bound checked after every batch."""
    rollback: RollbackOutcome

    @property
    def false_promotion_rate(self) -> float:
        return self.gate.false_promotions / self.runs

    @property
    def naive_false_promotion_rate(self) -> float:
        return self.naive.false_promotions / self.runs

    @property
    def false_rollback_rate(self) -> float:
        return self.rollback.false_rollbacks / self.runs

    @property
    def predicted_false_rollback_rate(self) -> float:
        """The design's own figure: exact run length, geometric shape."""
        return self.cusum.false_alarm_within(self.scenario.horizon, self.scenario.good)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values; infinite medians become ``None``."""
        s = self.scenario
        parameters = {f.name: getattr(s, f.name) for f in fields(s)}
        parameters["method"] = s.method.value
        return {
            "runs": self.runs,
            "seed": self.seed,
            **parameters,
            "cusum_up": self.cusum.up,
            "cusum_threshold": self.cusum.threshold,
            "false_promotion_rate": self.false_promotion_rate,
            "naive_false_promotion_rate": self.naive_false_promotion_rate,
            "median_events_to_promotion": _finite(self.gate.median_events),
            "naive_median_events_to_promotion": _finite(self.naive.median_events),
            "promotion_rate": self.gate.promotions / self.runs,
            "naive_promotion_rate": self.naive.promotions / self.runs,
            "false_rollback_rate": self.false_rollback_rate,
            "predicted_false_rollback_rate": self.predicted_false_rollback_rate,
            "alarm_before_drop_rate": self.rollback.alarms_before_drop / self.runs,
            "median_events_to_rollback": _finite(self.rollback.median_events),
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# -- the simulation --------------------------------------------------------------


def simulate(scenario: Scenario, *, runs: int = 1000, seed: int = 0) -> SimulationResult:
    """Simulate ``runs`` rollouts of each kind; the same seed gives the same result.

    Raises:
        ParameterError: ``runs`` is not positive (or, should the scenario's
            checks let one through, no CUSUM fits ``healthy``).
    """
    _require(runs >= 1, "runs", "must be a positive count", runs)
    try:
        cusum = Cusum.design(healthy=scenario.healthy, degraded=scenario.degraded,
                             false_alarm=scenario.false_alarm, horizon=scenario.horizon)
    except ValueError as exc:  # the scenario's own checks should have caught it
        raise ParameterError("healthy", f"admits no detector: {exc}") from exc
    # One stream per experiment, so changing e.g. the horizon leaves the
    # promotion runs exactly as they were.
    root = random.Random(seed)
    at_threshold, good, steady, drop = (random.Random(root.getrandbits(64)) for _ in range(4))
    gates = _Gates(scenario)
    false_gate, false_naive = _promotion_runs(scenario, scenario.at_threshold, runs,
                                              at_threshold, gates)
    good_gate, good_naive = _promotion_runs(scenario, scenario.good, runs, good, gates)
    return SimulationResult(
        scenario=scenario, runs=runs, seed=seed, cusum=cusum,
        gate=_gate_outcome(false_gate, good_gate),
        naive=_gate_outcome(false_naive, good_naive),
        rollback=_rollback_runs(scenario, cusum, runs, steady, drop),
    )


def _gate_outcome(at_threshold: list[float], good: list[float]) -> GateOutcome:
    return GateOutcome(
        false_promotions=sum(math.isfinite(n) for n in at_threshold),
        promotions=sum(math.isfinite(n) for n in good),
        median_events=float(statistics.median(good)),
    )


class _Gates:
    """Both gates' verdicts at ``(successes, n)``, remembered: the runs pass
    through the same few thousand counts again and again."""

    def __init__(self, scenario: Scenario) -> None:
        self._scenario = scenario
        self._seen: dict[tuple[int, int], tuple[bool, bool]] = {}

    def __call__(self, successes: int, n: int) -> tuple[bool, bool]:
        verdict = self._seen.get((successes, n))
        if verdict is None:
            verdict = self._seen[successes, n] = (self._gate(successes, n),
                                                  self._naive(successes, n))
        return verdict

    def _gate(self, successes: int, n: int) -> bool:
        s = self._scenario
        if s.method is Method.ONE_SIDED:
            return one_sided(successes, n, s.threshold, s.alpha) == 1
        if s.method is Method.NORMAL_MIXTURE:
            low = normal_mixture(successes, n, s.alpha, s.tuning).low
            return low is not None and low >= s.threshold
        return beta_binomial_low_at_least(successes, n, s.threshold, s.alpha)

    def _naive(self, successes: int, n: int) -> bool:
        low = wilson(successes, n, z=self._scenario.naive_z).low
        return low is not None and low >= self._scenario.threshold


def _promotion_runs(
    scenario: Scenario, agreement: float, runs: int, rng: random.Random, gates: _Gates,
) -> tuple[list[float], list[float]]:
    """Per run, the compared events at which the gate and the naive gate first
    promote (infinite when not within ``max_events``)."""
    full, last = divmod(scenario.max_events, scenario.check_every)
    batches = [binomial_table(scenario.check_every, agreement)] * full
    if last:  # a final, shorter batch so that exactly max_events are seen
        batches.append(binomial_table(last, agreement))
    sizes = [len(table) - 1 for table in batches]
    gate_at: list[float] = []
    naive_at: list[float] = []
    for _ in range(runs):
        first = _first_promotions(rng.random, batches, sizes, gates)
        gate_at.append(first[0])
        naive_at.append(first[1])
    return gate_at, naive_at


def _first_promotions(
    uniform: Callable[[], float], batches: list[list[float]], sizes: list[int], gates: _Gates,
) -> tuple[float, float]:
    gate_at = naive_at = math.inf
    successes = n = 0
    for table, size in zip(batches, sizes, strict=True):
        successes += bisect.bisect_right(table, uniform())
        n += size
        gate, naive = gates(successes, n)
        if gate and gate_at == math.inf:
            gate_at = n
        if naive and naive_at == math.inf:
            naive_at = n
        if gate_at < math.inf and naive_at < math.inf:
            break
    return gate_at, naive_at


def binomial_table(size: int, p: float) -> list[float]:
    """The CDF of Binomial(size, p) at 0 … size: ``bisect_right(table, u)`` of a
    uniform ``u`` in [0, 1) is a binomial draw."""
    if p <= 0.0 or p >= 1.0:
        return [1.0] * (size + 1) if p <= 0.0 else [0.0] * size + [1.0]
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(size + 1)
    table, total = [], 0.0
    for k in range(size + 1):
        total += math.exp(log_n - math.lgamma(k + 1) - math.lgamma(size - k + 1)
                          + k * log_p + (size - k) * log_q)
        table.append(total)
    table[-1] = 1.0  # rounding must not leave a gap above the last count
    return table


def _rollback_runs(
    scenario: Scenario, cusum: Cusum, runs: int, steady: random.Random, drop: random.Random,
) -> RollbackOutcome:
    healthy, dropped = 1.0 - scenario.good, 1.0 - scenario.drop_to  # disagreement rates
    false_rollbacks = alarms_before_drop = 0
    delays: list[float] = []
    for _ in range(runs):
        alarm, _state = cusum_walk(steady.random, healthy, cusum, 0, scenario.horizon)
        false_rollbacks += alarm is not None
    for _ in range(runs):
        alarm, state = cusum_walk(drop.random, healthy, cusum, 0, scenario.before_drop)
        if alarm is not None:
            alarms_before_drop += 1
            continue
        alarm, _state = cusum_walk(drop.random, dropped, cusum, state, scenario.horizon)
        delays.append(math.inf if alarm is None else alarm)
    return RollbackOutcome(
        false_rollbacks=false_rollbacks,
        alarms_before_drop=alarms_before_drop,
        median_events=float(statistics.median(delays)) if delays else math.inf,
    )


def cusum_walk(
    uniform: Callable[[], float], disagree: float, cusum: Cusum, statistic: int, length: int,
) -> tuple[int | None, int]:
    """Feed ``length`` comparisons at disagreement rate ``disagree`` to the
    CUSUM from ``statistic``, one disagreement at a time.

    Returns the 1-based index of the alarming comparison (``None`` without
    an alarm) and the statistic after the last comparison fed.
    """
    if disagree <= 0.0:
        return None, max(0, statistic - length)
    # Agreements before the next disagreement: floor(ln U / ln(1 − q)) with U
    # in (0, 1] is geometric, P(run ≥ k) = (1 − q)^k.
    scale = 1.0 / math.log1p(-disagree) if disagree < 1.0 else 0.0
    up, threshold, log = cusum.up, cusum.threshold, math.log
    seen = 0
    # The hot loop of the simulator: plain comparisons instead of max() halve its time.
    while True:
        run = int(log(1.0 - uniform()) * scale)
        if seen + run >= length:  # no disagreement left within the comparisons to feed
            statistic -= length - seen
            return None, statistic if statistic > 0 else 0
        seen += run + 1
        statistic -= run
        if statistic < 0:
            statistic = 0
        statistic += up
        if statistic >= threshold:
            return seen, statistic
