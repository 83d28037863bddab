"""What a named scenario reports: figures, gate beside naive, against a target.

Shared by the scenarios of :mod:`rollout.simulate_scenarios`: the measures
(a rate over runs, a median, an exact probability), one figure (a row of the
table), and the verdicts of both gates, remembered by count because the runs
pass through the same few thousand counts again and again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rollout.statistics import beta_binomial_low_at_least, one_sided


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` of ``runs`` runs; shown with its 95 % Wilson interval."""

    count: int
    runs: int

    @property
    def value(self) -> float:
        return self.count / self.runs

    def as_dict(self) -> dict[str, Any]:
        return {"rate": self.value, "count": self.count, "runs": self.runs}


@dataclass(frozen=True, slots=True)
class Median:
    """A median over runs; infinite when half the runs or more never got there."""

    value: float
    unit: str

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.value if math.isfinite(self.value) else None, "unit": self.unit}


@dataclass(frozen=True, slots=True)
class Exact:
    """A probability computed exactly (no sampling error)."""

    value: float

    def as_dict(self) -> dict[str, Any]:
        return {"exact": self.value}


Measure = Rate | Median | Exact


@dataclass(frozen=True, slots=True, kw_only=True)
class Figure:
    """One row: the new gate and the naive one on the same question.

    ``target`` is an upper limit on the gate's value (a rate, or a median
    count); ``naive_is`` says what the naive column is when it is not the
    scenario's usual naive gate.
    """

    what: str
    gate: Measure
    naive: Measure | None
    target: float | None = None
    naive_is: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.gate.value <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "gate": self.gate.as_dict(),
                "naive": self.naive.as_dict() if self.naive is not None else None,
                "naive_is": self.naive_is or None, "target": self.target, "met": self.met}


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    """A named scenario's figures over ``runs`` runs from ``seed``."""

    name: str
    runs: int
    seed: int
    setting: str
    """What was simulated, in one or two sentences."""
    naive: str
    """What the naive column is: what the tool did before."""
    figures: tuple[Figure, ...]

    @property
    def met(self) -> bool:
        return all(f.met is not False for f in self.figures)

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.name, "runs": self.runs, "seed": self.seed,
                "setting": self.setting, "naive": self.naive, "met": self.met,
                "figures": [f.as_dict() for f in self.figures]}


def median(values: list[float], unit: str) -> Median:
    """The median of ``values`` (``inf`` for a run that never got there)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return Median(ordered[middle], unit)
    low, high = ordered[middle - 1], ordered[middle]
    return Median(high if math.isinf(high) else (low + high) / 2, unit)


class Verdicts:
    """Whether each gate promotes at a count, remembered.

    :meth:`gate` is the new gate's test, ``one_sided(...) == 1`` (the function
    the gates call); :meth:`naive` the old one, the two-sided beta-binomial
    sequence's lower end at or above the threshold. A failing verdict changes
    nothing in a rollout (the step holds), so only passing matters here.
    """

    def __init__(self, threshold: float, alpha: float) -> None:
        self.threshold, self.alpha = threshold, alpha
        self._gate: dict[tuple[int, int], bool] = {}
        self._naive: dict[tuple[int, int], bool] = {}

    def gate(self, agreed: int, mature: int) -> bool:
        """``agreed`` of ``mature`` units: pending units count against."""
        if agreed <= self.threshold * mature:  # never shown above: skip the cache
            return False
        verdict = self._gate.get((agreed, mature))
        if verdict is None:
            verdict = self._gate[agreed, mature] = (
                mature > 0 and one_sided(agreed, mature, self.threshold, self.alpha) == 1)
        return verdict

    def naive(self, agreed: int, compared: int) -> bool:
        if agreed < self.threshold * compared:
            return False
        verdict = self._naive.get((agreed, compared))
        if verdict is None:
            verdict = self._naive[agreed, compared] = beta_binomial_low_at_least(
                agreed, compared, self.threshold, self.alpha)
        return verdict
