"""Intervals for reports. Gates use anytime-valid sequences instead (``rollout/gates.py``)."""

from __future__ import annotations

import math
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
