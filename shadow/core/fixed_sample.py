"""Intervals and test statistics for reports and drift.

Gates use anytime-valid sequences instead (``rollout/statistics.py``): these are
fixed-sample figures, valid when looked at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

Z_95 = 1.959963984540054
"""The two-sided 95 % standard normal quantile."""


class Interval(NamedTuple):
    rate: float | None
    low: float | None
    high: float | None


def wilson(successes: int, n: int, z: float = Z_95) -> Interval:
    """The Wilson score interval for a binomial proportion (Wilson, 1927).

    A fixed-sample interval: valid when looked at once, not when checked
    again and again as data arrives.

    >>> round(wilson(8, 10).low, 4)
    0.4902
    """
    if n <= 0:
        return Interval(None, None, None)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def psi(reference: Sequence[int], current: Sequence[int], epsilon: float = 1e-4) -> float:
    """Population stability index of two histograms over the same bins."""
    ref_total, cur_total = sum(reference), sum(current)
    total = 0.0
    for r, c in zip(reference, current, strict=True):
        p = max(r / ref_total, epsilon)
        q = max(c / cur_total, epsilon)
        total += (q - p) * math.log(q / p)
    return total


def ks_statistic(reference: dict[float, int], current: dict[float, int]) -> float:
    """Two-sample KS ``D`` from counts per distinct value."""
    ref_total, cur_total = sum(reference.values()), sum(current.values())
    ref_cum = cur_cum = 0
    d = 0.0
    for value in sorted(reference.keys() | current.keys()):
        ref_cum += reference.get(value, 0)
        cur_cum += current.get(value, 0)
        d = max(d, abs(ref_cum / ref_total - cur_cum / cur_total))
    return d


def ks_p_value(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of the two-sample KS statistic (Numerical Recipes ``probks``)."""
    root = math.sqrt(n * m / (n + m))
    return kolmogorov_sf((root + 0.12 + 0.11 / root) * d)


def kolmogorov_sf(lam: float) -> float:
    """``Q_KS(lam) = 2 sum_{j>=1} (-1)**(j-1) exp(-2 j**2 lam**2)``; 1 where it cannot converge."""
    a2 = -2.0 * lam * lam
    total, sign, previous = 0.0, 2.0, 0.0
    for j in range(1, 101):
        term = sign * math.exp(a2 * j * j)
        total += term
        if abs(term) <= 1e-3 * previous or abs(term) <= 1e-8 * total:
            return min(max(total, 0.0), 1.0)
        sign, previous = -sign, abs(term)
    return 1.0


def chi2_sf(x: float, dof: int) -> float:
    """``P(X >= x)`` for a chi-squared variable with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {dof}")
    if x <= 0:
        return 1.0
    return gamma_q(dof / 2.0, x / 2.0)


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma ``Q(a, x)`` (Numerical Recipes ``gammq``)."""
    if x < 0 or a <= 0:
        raise ValueError(f"gamma_q needs x >= 0 and a > 0, not x={x}, a={a}")
    if x < a + 1.0:
        return 1.0 - _gamma_series(a, x)
    return _gamma_fraction(a, x)


_ITMAX = 500
_EPS = 3e-16
_FPMIN = 1e-300


def _gamma_series(a: float, x: float) -> float:
    """``P(a, x)`` by its series, for ``x < a + 1``."""
    if x == 0:
        return 0.0
    ap, total = a, 1.0 / a
    delta = total
    for _ in range(_ITMAX):
        ap += 1.0
        delta *= x / ap
        total += delta
        if abs(delta) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_fraction(a: float, x: float) -> float:
    """``Q(a, x)`` by its continued fraction (modified Lentz), for ``x >= a + 1``."""
    b = x + 1.0 - a
    c = 1.0 / _FPMIN
    d = 1.0 / b
    h = d
    for i in range(1, _ITMAX + 1):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _FPMIN if abs(d) < _FPMIN else d
        c = b + an / c
        c = _FPMIN if abs(c) < _FPMIN else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h
