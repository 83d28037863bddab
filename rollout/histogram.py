"""A histogram of non-negative values in bins 0.2 % wide, for quantiles kept up to date.

Counting a value costs one logarithm; a quantile walks the occupied bins. The
gates keep the 95th percentile of latencies and of label delays over a step
of millions of predictions this way, instead of sorting them all again at
every evaluation. A quantile is the upper edge of the bin it falls in: never
below the exact value, at most 0.2 % above it (values below ``floor`` share
one bin and come back as ``floor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_RATIO = 1.002
_LOG_RATIO = math.log(_RATIO)


@dataclass(slots=True)
class Histogram:
    floor: float = 1e-3
    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0

    def add(self, value: float, count: int = 1) -> None:
        index = self.bin(value)
        self.counts[index] = self.counts.get(index, 0) + count
        self.total += count

    def bin(self, value: float) -> int:
        if value <= self.floor:
            return 0
        return 1 + int(math.log(value / self.floor) / _LOG_RATIO)

    def upper(self, index: int) -> float:
        """The upper edge of a bin."""
        return self.floor * _RATIO ** index

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (``quantile_disc``: the smallest value with at least a
        ``q`` share at or below it), ``None`` when empty.

        >>> h = Histogram()
        >>> for v in range(1, 101):
        ...     h.add(float(v))
        >>> 95.0 <= h.quantile(0.95) <= 95.0 * 1.002
        True
        """
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return self.upper(index)
        return self.upper(max(self.counts))
