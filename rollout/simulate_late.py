"""The named scenario ``late-disagreements``: labels of the hard cases come later.

One key arrives per time unit (``occurred_at`` = its index). Its label
arrives after an exponential delay, with mean ``mean_delay`` for an agreement
and ``slower`` times that for a disagreement (rounded down to whole time
units). The gates are checked every ``check_every`` time units:

* the **gate** (:mod:`rollout.units`): ``label_window: auto`` is the 95th
  percentile of the delays of the keys labelled so far; keys older than that
  are mature; the step holds while fewer than ``min_labelled`` of them are
  labelled; mature keys without a label count as disagreements, and it
  passes when ``one_sided(agreed, mature, threshold, alpha) == 1``;
* the **naive** gate: whatever is labelled so far, the beta-binomial sequence.

Each check costs the labels that arrived since the last one plus the keys
that came of age: the mature counts follow a cursor over the keys in arrival
order, and the percentile a pointer over a histogram of whole delays.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from rollout.simulate import ParameterError
from rollout.simulate_figures import Figure, Rate, ScenarioResult, Verdicts, median
from rollout.simulate_promotion import GateSetting


@dataclass(frozen=True, slots=True, kw_only=True)
class Delays:
    """How late labels arrive, and what the gate asks of them.

    Raises:
        ParameterError: a value out of range (naming it).
    """

    mean_delay: float = 400.0
    """Mean label delay of an agreement, in keys (one key arrives per time unit)."""
    slower: float = 5.0
    """A disagreement's mean delay is this many times longer."""
    quantile: float = 0.95
    """``label_window: auto``: this quantile of the delays observed so far."""
    min_labelled: float = 0.8
    expiry: float | None = 4.0
    """``label_expiry: auto``: unlabelled keys older than this many windows leave the count
    (``None``: never)."""

    def __post_init__(self) -> None:
        if not self.mean_delay >= 0.0 or not self.slower > 0.0:
            raise ParameterError("mean_delay", "and slower must be positive, got "
                                 f"{self.mean_delay} and {self.slower}")
        for name in ("quantile", "min_labelled"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParameterError(name, f"must be between 0 and 1, got {value}")
        if self.expiry is not None and not self.expiry >= 1.0:
            raise ParameterError("expiry", f"must be at least one window, got {self.expiry}")


class _Window:
    """The ``quantile`` of the whole delays seen so far: the smallest delay ``w``
    with at least that share of them at or below it (a pointer over a
    histogram, moved as delays arrive)."""

    def __init__(self, longest: int, quantile: float) -> None:
        self.histogram = [0] * (longest + 1)
        self.quantile = quantile
        self.total = self.at = self.below = 0  # below: delays ≤ at

    def add(self, delay: int) -> None:
        self.histogram[delay] += 1
        self.total += 1
        if delay <= self.at:
            self.below += 1

    def value(self) -> int:
        need, histogram = self.quantile * self.total, self.histogram
        while self.below < need:
            self.at += 1
            self.below += histogram[self.at]
        while self.at > 0 and self.below - histogram[self.at] >= need:
            self.below -= histogram[self.at]
            self.at -= 1
        return self.at


LATE_SETTING = GateSetting(max_keys=10_000)


@dataclass(frozen=True, slots=True)
class LateRun:
    """One run: the keys (arrived) at which each gate first passed (infinite: never)."""

    gate: float
    naive: float


def late_run(rng: random.Random, agreement: float, delays: Delays, setting: GateSetting,
             verdicts: Verdicts) -> LateRun:
    """One run of ``setting.max_keys`` keys (fewer once both gates have passed)."""
    every, last = setting.check_every, setting.max_keys
    checks = math.ceil(last / every)
    seen: list[list[tuple[int, int, int]]] = [[] for _ in range(checks + 1)]
    labelled, agreed = bytearray(last + 1), bytearray(last + 1)  # by arrival
    window = _Window(last, delays.quantile)
    fast, slow = delays.mean_delay, delays.mean_delay * delays.slower
    uniform, log = rng.random, math.log
    cursor = cursor_labelled = cursor_agreed = 0  # mature counts: keys 1 … cursor
    lapse = lapse_labelled = 0  # keys 1 … lapse are past their expiry
    naive_labelled = naive_agreed = 0
    gate_at = naive_at = math.inf
    for check in range(1, checks + 1):
        now = min(check * every, last)
        for key in range((check - 1) * every + 1, now + 1):
            agrees = 1 if uniform() < agreement else 0
            delay = int(-(fast if agrees else slow) * log(1.0 - uniform()))
            visible = -(-(key + delay) // every)  # the first check that sees the label
            if visible <= checks and key + delay <= last:
                seen[visible].append((key, delay, agrees))
        for key, delay, agrees in seen[check]:
            window.add(delay)
            labelled[key], agreed[key] = 1, agrees
            naive_labelled += 1
            naive_agreed += agrees
            if key <= cursor:
                cursor_labelled += 1
                cursor_agreed += agrees
            if key <= lapse:
                lapse_labelled += 1
        cutoff = max(now - window.value(), cursor)  # the cutoff only moves forward
        if cutoff > cursor:
            cursor_labelled += sum(labelled[cursor + 1:cutoff + 1])
            cursor_agreed += sum(agreed[cursor + 1:cutoff + 1])
        elif cutoff < cursor:
            cursor_labelled -= sum(labelled[cutoff + 1:cursor + 1])
            cursor_agreed -= sum(agreed[cutoff + 1:cursor + 1])
        cursor = cutoff
        if delays.expiry is not None:
            # Expiry only moves forward, as the ledger's does; it never passes the window.
            expired = min(max(now - int(delays.expiry * window.value()), 0), cursor)
            if expired > lapse:
                lapse_labelled += sum(labelled[lapse + 1:expired + 1])
                lapse = expired
        judged = cursor - (lapse - lapse_labelled)  # unlabelled keys past expiry leave
        if (gate_at == math.inf and judged and cursor_labelled >= setting.min_compared
                and cursor_labelled >= delays.min_labelled * judged
                and verdicts.gate(cursor_agreed, judged)):
            gate_at = now
        if (naive_at == math.inf and naive_labelled >= setting.min_compared
                and verdicts.naive(naive_agreed, naive_labelled)):
            naive_at = now
        if gate_at < math.inf and naive_at < math.inf:
            break
    return LateRun(gate_at, naive_at)


def late_disagreements(runs: int, seed: int, *, agreement: float = 0.88, good: float = 0.95,
                       delays: Delays = Delays(),
                       setting: GateSetting = LATE_SETTING) -> ScenarioResult:
    """A candidate just below the threshold whose disagreements are labelled late;
    and, for the cost of waiting, a good one under the same delays."""
    if runs < 1:
        raise ParameterError("runs", f"must be a positive count, got {runs}")
    for name, value in (("agreement", agreement), ("good", good)):
        if not 0.0 <= value <= 1.0:
            raise ParameterError(name, f"must be between 0 and 1, got {value}")
    root = random.Random(seed)
    below, above = random.Random(root.getrandbits(64)), random.Random(root.getrandbits(64))
    verdicts = Verdicts(setting.threshold, setting.alpha)
    bad = [late_run(below, agreement, delays, setting, verdicts) for _ in range(runs)]
    fine = [late_run(above, good, delays, setting, verdicts) for _ in range(runs)]
    return ScenarioResult(
        name="late-disagreements", runs=runs, seed=seed,
        setting=(f"true agreement {agreement:g}, one key per time unit, label delays "
                 f"exponential with mean {delays.mean_delay:g} (agreements) and "
                 f"{delays.mean_delay * delays.slower:g} (disagreements); label_window auto "
                 f"(p{delays.quantile * 100:g} of observed delays), label_expiry "
                 + (f"{delays.expiry:g} windows" if delays.expiry is not None else "never")
                 + f", min_labelled {delays.min_labelled:g}; threshold {setting.threshold:g}, "
                 f"checked every {setting.check_every} keys, at most {setting.max_keys:,} keys"),
        naive="whatever is labelled so far, beta-binomial",
        figures=(
            Figure(what=f"false promotion (true agreement {agreement:g})",
                   gate=Rate(sum(math.isfinite(r.gate) for r in bad), runs),
                   naive=Rate(sum(math.isfinite(r.naive) for r in bad), runs), target=0.05),
            Figure(what=f"median keys arrived to promotion (at {good:g}, same delays)",
                   gate=median([r.gate for r in fine], "keys"),
                   naive=median([r.naive for r in fine], "keys")),
        ),
    )
