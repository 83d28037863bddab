"""The statistics behind the gates: anytime-valid bounds and a degradation detector.

Gates are looked at again and again while data arrives. A fixed-sample
interval (Wilson, in ``shadow/core/fixed_sample.py``) checked after every batch promotes
a candidate whose true agreement equals the threshold in about a third of
runs. The bounds here are *confidence sequences* (Howard, Ramdas, McAuliffe
and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Annals of Statistics 2021): with probability at least 1 − α they
contain the true rate at every sample size at once, so checking them after
every comparison costs nothing in validity.

With ``S`` agreements in ``n`` compared events and ``L = ln(1/α)``:

* **Beta-binomial mixture** (Robbins; the default). Mixing the likelihood
  ratio of every alternative rate ``q`` under a uniform prior gives the
  martingale ``M_n(p) = B(S+1, n−S+1) / (p^S (1−p)^(n−S))``; by Ville's
  inequality ``P(sup_n M_n(p) ≥ 1/α) ≤ α`` at the true ``p``, so the
  sequence is ``{p : ln B(S+1, n−S+1) − S ln p − (n−S) ln(1−p) < L}``.
  ``ln M_n`` is convex in ``p`` with its minimum (≤ 0) at ``S/n``, so the
  set is an interval whose ends are found by bisection with ``math.lgamma``.
  It is tight near the high rates gates care about.
* **Hoeffding-scaled normal mixture**. With a tuning count ``t`` (the
  sample size at which the bound is tightest),
  ``ρ = (t/4) / (2L + ln(1 + 2L))`` and
  ``u(n) = √((n/4 + ρ) · (ln(1 + n/(4ρ)) + 2L))``, the sequence is
  ``S/n ± u(n)/n``. Simpler, valid for any bounded outcome, and slower to
  promote near 0.95 (a median of 1,000 comparisons against 400 in the
  simulator, ``docs/statistics.md``).

Both are two-sided at level α, so each one-sided statement ("the rate is at
least the lower end") errs with probability at most α.

Rollback uses a **Bernoulli CUSUM** on disagreements (Page, 1954): a
sequential test of "agreement is ``healthy``" against "agreement is
``degraded``" that restarts itself while the evidence favours health, so it
reacts to a drop after thousands of good comparisons as fast as after none.
Its log-likelihood-ratio increments are rounded to integers (an agreement
moves it down one unit, a disagreement up ``up`` units), which makes it a
finite Markov chain whose average run length is computed exactly; the alarm
threshold is the smallest one whose false-alarm probability over a horizon
stays within budget.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from shadow.config.rollout import Method


class Bounds(NamedTuple):
    """The ends of a confidence sequence at one sample size; ``None`` without data."""

    low: float | None
    high: float | None


# -- beta-binomial mixture ------------------------------------------------------


def log_mixture(successes: int, n: int, p: float) -> float:
    """``ln M_n(p)``: the log of the beta-binomial mixture martingale at rate ``p``."""
    failures = n - successes
    if p <= 0.0:
        return math.inf if successes else _log_beta(successes + 1, failures + 1)
    if p >= 1.0:
        return math.inf if failures else _log_beta(successes + 1, failures + 1)
    return (_log_beta(successes + 1, failures + 1)
            - successes * math.log(p) - failures * math.log1p(-p))


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def beta_binomial(successes: int, n: int, alpha: float) -> Bounds:
    """The beta-binomial confidence sequence for a rate at ``n`` observations.

    >>> b = beta_binomial(95, 100, 0.05)
    >>> round(b.low, 3), round(b.high, 3)
    (0.84, 0.993)
    """
    _check(successes, n, alpha)
    if n == 0:
        return Bounds(None, None)
    level = math.log(1 / alpha)
    centre = successes / n

    def outside(p: float) -> bool:
        return log_mixture(successes, n, p) >= level

    low = 0.0 if not outside(0.0) else _bisect(outside, 0.0, centre)
    high = 1.0 if not outside(1.0) else _bisect(outside, 1.0, centre)
    return Bounds(low, high)


def beta_binomial_low_at_least(successes: int, n: int, threshold: float, alpha: float) -> bool:
    """Whether the sequence's lower end is at or above ``threshold``, without bisection.

    The set is an interval around ``S/n``, so its lower end is at or above a
    rate below ``S/n`` exactly when that rate is outside it.
    """
    _check(successes, n, alpha)
    if n == 0 or successes < threshold * n:
        return False
    return log_mixture(successes, n, threshold) >= math.log(1 / alpha)


def beta_binomial_high_below(successes: int, n: int, threshold: float, alpha: float) -> bool:
    """Whether the sequence's upper end is below ``threshold``."""
    _check(successes, n, alpha)
    if n == 0 or successes >= threshold * n:
        return False
    return log_mixture(successes, n, threshold) >= math.log(1 / alpha)


def _bisect(
    outside: Callable[[float], bool], out: float, inside: float, iterations: int = 60,
) -> float:
    """The boundary between a point outside the set and one inside it."""
    for _ in range(iterations):
        middle = (out + inside) / 2
        if outside(middle):
            out = middle
        else:
            inside = middle
    return inside


# -- Hoeffding-scaled normal mixture ----------------------------------------------


def normal_mixture(successes: int, n: int, alpha: float, tuning: int = 500) -> Bounds:
    """The normal-mixture confidence sequence with sub-Gaussian (Hoeffding) scale 1/4.

    ``tuning`` is the sample size at which the bound is tightest.

    >>> b = normal_mixture(95, 100, 0.05)
    >>> round(b.low, 3)
    0.782
    """
    _check(successes, n, alpha)
    if n == 0:
        return Bounds(None, None)
    if tuning < 1:
        raise ValueError(f"tuning must be a positive count, got {tuning}")
    level = math.log(1 / alpha)
    rho = (tuning / 4) / (2 * level + math.log1p(2 * level))
    radius = math.sqrt((n / 4 + rho) * (math.log1p(n / (4 * rho)) + 2 * level)) / n
    centre = successes / n
    return Bounds(max(0.0, centre - radius), min(1.0, centre + radius))


# -- one-sided beta mixtures ------------------------------------------------------


def log_above(successes: float, n: int, threshold: float) -> float:
    """``ln M⁺_n(t)``: evidence that the rate is *above* ``t``.

    The likelihood ratio of every alternative ``q ≥ t`` against ``t``, mixed
    under a uniform prior on ``[t, 1]``::

        M⁺_n(t) = ∫_t^1 (q/t)^S ((1−q)/(1−t))^(n−S) dq / (1 − t)
                = B(S+1, n−S+1) · (1 − I_t(S+1, n−S+1)) / ((1−t) · t^S · (1−t)^(n−S))

    For any true rate ``p ≤ t`` one observation multiplies it by at most
    ``p·q/t + (1−p)(1−q)/(1−t) ≤ 1``, so it is a nonnegative supermartingale
    for every such ``p`` at once, and ``P(sup_n M⁺_n ≥ 1/α) ≤ α`` (Ville).
    The same holds for observations anywhere in [0, 1] with mean ``p``
    (``x ↦ a^x b^(1−x)`` is convex, so a value in between multiplies it by
    no more than the two ends would on average): ``successes`` may be a sum
    of per-key means.
    """
    _check_counts(successes, n)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    failures = n - successes
    a, b = successes + 1, failures + 1
    return (_log_beta(a, b) + _log_upper_tail(threshold, a, b) - math.log1p(-threshold)
            - successes * math.log(threshold) - failures * math.log1p(-threshold))


def log_below(successes: float, n: int, threshold: float) -> float:
    """``ln M⁻_n(t)``: evidence that the rate is *below* ``t``, the mirror of
    :func:`log_above` (a uniform prior on ``[0, t]``)."""
    return log_above(n - successes, n, 1.0 - threshold)


def one_sided(successes: float, n: int, threshold: float, alpha: float) -> int:
    """``+1`` when the rate is shown above ``threshold``, ``−1`` when shown
    below it, ``0`` while undecided; each statement errs with probability at
    most ``alpha`` under continuous monitoring.

    >>> one_sided(290, 300, 0.9, 0.05), one_sided(60, 100, 0.9, 0.05), one_sided(9, 10, 0.9, 0.05)
    (1, -1, 0)
    """
    _check(successes, n, alpha)
    if n == 0:
        return 0
    level = math.log(1 / alpha)
    if successes > threshold * n and log_above(successes, n, threshold) >= level:
        return 1
    if successes < threshold * n and log_below(successes, n, threshold) >= level:
        return -1
    return 0


def one_sided_bounds(successes: float, n: int, alpha: float) -> Bounds:
    """The rates the one-sided tests cannot yet rule out: the lower end is the
    highest threshold shown exceeded, the upper end the lowest shown not reached.

    >>> b = one_sided_bounds(95, 100, 0.05)
    >>> round(b.low, 3), round(b.high, 3)
    (0.866, 0.993)
    """
    _check(successes, n, alpha)
    if n == 0:
        return Bounds(None, None)
    level = math.log(1 / alpha)
    centre = successes / n

    def above(t: float) -> bool:
        return 0.0 < t < centre and log_above(successes, n, t) >= level

    def below(t: float) -> bool:
        return centre < t < 1.0 and log_below(successes, n, t) >= level

    # To a millionth: the decisions never rest on the bounds (one_sided decides).
    low = _bisect(above, 1e-12, centre, iterations=20) if above(1e-12) else 0.0
    high = _bisect(below, 1 - 1e-12, centre, iterations=20) if below(1 - 1e-12) else 1.0
    return Bounds(low, high)


def _log_upper_tail(x: float, a: float, b: float) -> float:
    """``ln(1 − I_x(a, b))``, the log of the regularised incomplete beta's upper tail."""
    return _log_regularised_beta(1.0 - x, b, a)


def _log_regularised_beta(x: float, a: float, b: float) -> float:
    """``ln I_x(a, b)`` from its continued fraction (modified Lentz), on the side
    where the fraction converges fast; the other side through ``I_x(a, b) =
    1 − I_{1−x}(b, a)``, kept in logs so that tails of 1e-300 stay exact."""
    if x <= 0.0:
        return -math.inf
    if x >= 1.0:
        return 0.0
    if x < (a + 1) / (a + b + 2):
        return _log_beta_prefix(x, a, b) + math.log(_beta_fraction(x, a, b)) - math.log(a)
    other = _log_beta_prefix(1.0 - x, b, a) + math.log(_beta_fraction(1.0 - x, b, a)) \
        - math.log(b)
    return math.log1p(-math.exp(other)) if other < 0 else -math.inf


def _log_beta_prefix(x: float, a: float, b: float) -> float:
    return a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)


def _beta_fraction(x: float, a: float, b: float, iterations: int = 10_000) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, iterations + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < eps:
            return fraction
    raise ArithmeticError(f"incomplete beta did not converge for x={x}, a={a}, b={b}")


def confidence_sequence(
    successes: float, n: int, alpha: float, method: Method = Method.ONE_SIDED,
    tuning: int = 500,
) -> Bounds:
    """The bounds of ``method`` at ``successes`` of ``n``; ``successes`` may be a
    sum of values in [0, 1] (one key's mean agreement) for the one-sided mixture."""
    if method is Method.ONE_SIDED:
        return one_sided_bounds(successes, n, alpha)
    whole = round(successes)
    if method is Method.NORMAL_MIXTURE:
        return normal_mixture(whole, n, alpha, tuning)
    return beta_binomial(whole, n, alpha)


def _check(successes: float, n: int, alpha: float) -> None:
    _check_counts(successes, n)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")


def _check_counts(successes: float, n: int) -> None:
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")


# -- Bernoulli CUSUM ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cusum:
    """A Bernoulli CUSUM on disagreements, in integer units.

    An agreement moves the statistic down one unit (never below zero), a
    disagreement up ``up`` units; it alarms on reaching ``threshold``.
    """

    healthy: float
    degraded: float
    up: int
    threshold: int
    false_alarm: float | None = None
    horizon: int | None = None
    """With both set, the budget renews every ``horizon`` comparisons (:meth:`advance`)."""

    @classmethod
    def design(
        cls, *, healthy: float, degraded: float, false_alarm: float, horizon: int
    ) -> Cusum:
        """The detector of ``healthy`` → ``degraded`` agreement whose chance of
        alarming within ``horizon`` comparisons of a candidate at ``healthy``
        is at most ``false_alarm`` (and less for any candidate above it).

        >>> c = Cusum.design(healthy=0.9, degraded=0.8, false_alarm=0.01, horizon=100_000)
        >>> c.up, c.threshold
        (6, 113)

        Raises:
            ValueError: a value out of range, or rates so low (``healthy`` ≤ 0.5)
                that no detector in whole steps drifts down at ``healthy``.
        """
        if not 0.0 < degraded < healthy < 1.0:
            raise ValueError(
                f"need 0 < degraded < healthy < 1, got degraded={degraded}, healthy={healthy}")
        if not 0.0 < false_alarm < 1.0 or horizon < 1:
            raise ValueError("false_alarm must be in (0, 1) and horizon a positive count")
        up = _whole_step_up(healthy, degraded)
        threshold = _epoch_threshold(1 - healthy, up, false_alarm, horizon, 0)
        return cls(healthy, degraded, up, threshold, false_alarm, horizon)

    def threshold_at(self, seen: int) -> int:
        """The alarm threshold for the comparison after ``seen`` of them.

        The budget renews every ``horizon`` comparisons and halves each time:
        the ``k``-th renewal (from 0) may alarm falsely with probability
        ``false_alarm / 2^k``, so the chance of a false alarm *ever* stays
        below ``2 · false_alarm`` however long the step lasts, and below
        ``false_alarm`` within the first ``horizon``. The threshold rises by
        a few units per renewal; detection slows by as little.
        """
        if self.false_alarm is None or self.horizon is None:
            return self.threshold
        epoch = seen // self.horizon
        if epoch == 0:
            return self.threshold
        return _epoch_threshold(1 - self.healthy, self.up, self.false_alarm, self.horizon,
                                min(epoch, 60))

    def advance(self, state: DetectorState, agreements: Iterable[bool]) -> DetectorState:
        """Feed comparisons in arrival order from ``state``; an alarm is final.

        >>> c = Cusum.design(healthy=0.95, degraded=0.8, false_alarm=0.01, horizon=100_000)
        >>> s = c.advance(DetectorState(), [True] * 10 + [False] * 3)
        >>> s.statistic, s.seen, s.alarmed_at
        (24, 13, None)
        """
        if state.alarmed_at is not None:
            return state
        statistic, seen, up = state.statistic, state.seen, self.up
        threshold = self.threshold_at(seen)
        bound = (seen // self.horizon + 1) * self.horizon if self.horizon else math.inf
        for agree in agreements:
            if seen >= bound:
                threshold, bound = self.threshold_at(seen), bound + (self.horizon or 0)
            seen += 1
            statistic = statistic - 1 if agree else statistic + up
            if statistic < 0:
                statistic = 0
            elif statistic >= threshold:
                return DetectorState(statistic, seen, alarmed_at=seen)
        return DetectorState(statistic, seen, None)

    def run(self, agreements: Iterable[bool], start: int = 0) -> CusumResult:
        """Feed comparisons in order; stops at the first alarm."""
        statistic, up, threshold = start, self.up, self.threshold
        seen = 0
        for agree in agreements:
            seen += 1
            statistic = statistic - 1 if agree else statistic + up
            if statistic < 0:
                statistic = 0
            elif statistic >= threshold:
                return CusumResult(statistic, seen, alarmed_at=seen)
        return CusumResult(statistic, seen, alarmed_at=None)

    def false_alarm_within(self, horizon: int, agreement: float | None = None) -> float:
        """The chance of an alarm within ``horizon`` comparisons at ``agreement``
        (the healthy rate by default), from the exact average run length and
        the near-geometric shape of a CUSUM's run length."""
        arl = average_run_length(1 - (self.healthy if agreement is None else agreement),
                                 self.up, self.threshold)
        return -math.expm1(-horizon / arl)

    def mean_delay(self, agreement: float) -> float:
        """The average number of comparisons to an alarm from zero at ``agreement``."""
        return average_run_length(1 - agreement, self.up, self.threshold)


@dataclass(frozen=True, slots=True)
class DetectorState:
    """Where a forward-running detector stands: persisted between evaluations."""

    statistic: int = 0
    seen: int = 0
    """Comparisons fed so far in this step."""
    alarmed_at: int | None = None
    """The 1-based index of the comparison that raised the alarm."""


@functools.lru_cache(maxsize=1024)
def _epoch_threshold(disagree: float, up: int, false_alarm: float, horizon: int,
                     epoch: int) -> int:
    budget = false_alarm / 2**epoch
    target = -horizon / math.log1p(-budget)  # the run length giving that chance
    return _smallest_threshold(disagree, up, target)


def _whole_step_up(healthy: float, degraded: float) -> int:
    """The disagreement step, in units of an agreement's step down.

    The log-likelihood ratio of degraded against healthy is rounded to whole
    units. At ``healthy`` the statistic must drift down (``up·(1−h) < h``), or
    false alarms come at a steady rate and no threshold is high enough; the
    exact ratio always does (its mean at ``healthy`` is minus a Kullback-Leibler
    divergence); rounding up can break it, so it rounds down then.

    Raises:
        ValueError: not even a step of one drifts down (``healthy`` ≤ 0.5).
    """
    ratio = math.log((1 - degraded) / (1 - healthy)) / -math.log(degraded / healthy)

    def drifts_down(up: int) -> bool:
        # With a margin: 9 · (1 − 0.9) is a hair below 0.9 in floating point.
        return up * (1 - healthy) < healthy * (1 - 1e-9)

    up = max(1, round(ratio))
    if not drifts_down(up):
        up = max(1, math.floor(ratio))
    if not drifts_down(up):
        raise ValueError(
            f"no CUSUM in whole steps for healthy={healthy}, degraded={degraded}: even a "
            f"disagreement step of {up} would not let the statistic drift down at the healthy rate")
    return up


def _smallest_threshold(disagree: float, up: int, target: float) -> int:
    """The smallest threshold (from ``up``) whose average run length reaches ``target``.

    A higher threshold is reached later on every path, so the run length
    grows with it: double, then bisect (a linear search took minutes for
    close healthy and degraded rates).
    """
    if average_run_length(disagree, up, up) >= target:
        return up
    failing, passing = up, 2 * up
    while average_run_length(disagree, up, passing) < target:
        failing, passing = passing, 2 * passing
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if average_run_length(disagree, up, middle) >= target:
            passing = middle
        else:
            failing = middle
    return passing


class CusumResult(NamedTuple):
    statistic: int
    seen: int
    alarmed_at: int | None
    """The 1-based index of the comparison that raised the alarm."""


def average_run_length(disagree: float, up: int, threshold: int) -> float:
    """Expected comparisons until the integer CUSUM first reaches ``threshold`` from 0.

    With states ``0 … h−1`` the run lengths solve
    ``L_i = 1 + q·L_{i+up} + (1−q)·L_{max(i−1, 0)}`` (``L_j = 0`` for ``j ≥ h``).
    Only the sub-diagonal lies below the diagonal, so elimination runs down
    the band in ``O(h · up)``.
    """
    q, h = disagree, threshold
    if not 0.0 <= q <= 1.0 or h < 1 or up < 1:
        raise ValueError("need a probability, a positive threshold and a positive step")
    if q == 0.0:
        return math.inf
    # Rows of (I − P) as {column: value}, right-hand side all ones.
    rows: list[dict[int, float]] = []
    for i in range(h):
        row: dict[int, float] = {i: 1.0}
        below = max(i - 1, 0)
        row[below] = row.get(below, 0.0) - (1 - q)
        if i + up < h:
            row[i + up] = row.get(i + up, 0.0) - q
        rows.append(row)
    rhs = [1.0] * h
    for k in range(h - 1):
        factor = rows[k + 1].get(k, 0.0) / rows[k][k]
        if factor:
            for column, value in rows[k].items():
                rows[k + 1][column] = rows[k + 1].get(column, 0.0) - factor * value
            rhs[k + 1] -= factor * rhs[k]
    lengths = [0.0] * h
    for i in range(h - 1, -1, -1):
        total = rhs[i] - sum(v * lengths[c] for c, v in rows[i].items() if c > i)
        lengths[i] = total / rows[i][i]
    return lengths[0]
