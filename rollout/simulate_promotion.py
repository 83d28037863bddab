"""Named promotion scenarios with instant labels: the gate beside the naive one.

The gate is the new one: one unit per key, :func:`rollout.statistics.one_sided`
(through :class:`~rollout.simulate_figures.Verdicts`), segment floors as
gates of their own. The naive gate is what the tool did before: every event
an independent trial, the two-sided beta-binomial sequence, a segment judged
by its point estimate once it has ``min_samples`` compared events.

A run checks both after every ``check_every`` keys until each has passed,
or up to ``max_keys``. A failing verdict makes no transition in a rollout
(the step holds and data keeps coming), so only the first pass counts. A batch of keys is a few
binomial draws (inverse CDF over cached tables), exact in distribution.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from rollout.simulate import ParameterError, binomial_table
from rollout.simulate_figures import Figure, Rate, ScenarioResult, Verdicts, median


@dataclass(frozen=True, slots=True, kw_only=True)
class GateSetting:
    """How the gates are checked in a named scenario.

    Raises:
        ParameterError: a value out of range (naming it).
    """

    threshold: float = 0.90
    alpha: float = 0.05
    check_every: int = 100
    """Keys between checks (for the naive gate: those keys' events)."""
    max_keys: int = 20_000
    min_compared: int = 0
    """Compared keys (naive: events) a gate needs before it may pass."""

    def __post_init__(self) -> None:
        for name in ("threshold", "alpha"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ParameterError(name, f"must be between 0 and 1 (exclusive), got {value}")
        if self.check_every < 1 or self.max_keys < self.check_every:
            raise ParameterError("check_every", "must be positive and at most max_keys, "
                                 f"got {self.check_every} and {self.max_keys}")


SEGMENT_SETTING = GateSetting(min_compared=500)


class Draws:
    """Binomial draws from one random stream over cached inverse-CDF tables."""

    def __init__(self, rng: random.Random) -> None:
        self.uniform = rng.random
        self._tables: dict[tuple[int, float], list[float]] = {}

    def binomial(self, size: int, p: float) -> int:
        table = self._tables.get((size, p))
        if table is None:
            table = self._tables[size, p] = binomial_table(size, p)
        return bisect.bisect_right(table, self.uniform())


Passes = tuple[float, float]
"""Keys at which the gate and the naive gate first passed (infinite: never)."""


def _rates(passes: list[Passes]) -> tuple[Rate, Rate]:
    runs = len(passes)
    return (Rate(sum(math.isfinite(g) for g, _ in passes), runs),
            Rate(sum(math.isfinite(n) for _, n in passes), runs))


def _run(setting: GateSetting, check: Callable[[int], tuple[bool, bool]]) -> Passes:
    """Check every ``check_every`` keys; ``check(keys)`` draws the next batch and
    says whether each gate passes at the new totals."""
    gate = naive = math.inf
    keys = 0
    while keys < setting.max_keys and (gate == math.inf or naive == math.inf):
        keys += min(setting.check_every, setting.max_keys - keys)
        passes, naive_passes = check(keys)
        if passes and gate == math.inf:
            gate = keys
        if naive_passes and naive == math.inf:
            naive = keys
    return gate, naive


# -- events per key ----------------------------------------------------------------


def draw_keys(draws: Draws, keys: int, events: int, correlation: float,
              agreement: float) -> tuple[int, int]:
    """Agreeing keys and agreeing events among ``keys`` keys of ``events`` events each.

    A key's first event agrees at rate ``agreement``; it is the key's unit
    (``unit: first``). Each later event copies it with probability
    ``correlation``, else agrees independently at the same rate, so the
    correlation between the first event and any later one is ``correlation``.
    """
    agreeing = draws.binomial(keys, agreement)
    later = events - 1
    if later == 0:
        return agreeing, agreeing
    copies = correlation + (1.0 - correlation) * agreement  # a later event of an agreeing key
    strays = (1.0 - correlation) * agreement                # ... of a disagreeing key
    agreeing_events = (agreeing + draws.binomial(later * agreeing, copies)
                       + draws.binomial(later * (keys - agreeing), strays))
    return agreeing, agreeing_events


def events_per_key(runs: int, seed: int, *, events: int = 5, correlation: float = 1.0,
                   agreement: float = 0.90, setting: GateSetting = GateSetting()) -> ScenarioResult:
    """Keys of ``events`` correlated events at true per-key ``agreement``."""
    _positive(runs, "runs")
    _positive(events, "events")
    _unit(correlation, "correlation")
    _unit(agreement, "agreement")
    draws, verdicts = Draws(random.Random(seed)), Verdicts(setting.threshold, setting.alpha)
    firsts = [_run(setting, _keys_check(draws, verdicts, events, correlation, agreement,
                                        setting)) for _ in range(runs)]
    gate, naive = _rates(firsts)
    return ScenarioResult(
        name="events-per-key" if events == 5 else f"events-per-key-{events}", runs=runs,
        seed=seed,
        setting=(f"keys of {events} events each (correlation {correlation:g}), true per-key "
                 f"agreement {agreement:g}, threshold {setting.threshold:g}, alpha "
                 f"{setting.alpha:g}, checked every {setting.check_every} keys, at most "
                 f"{setting.max_keys:,} keys"),
        naive="every event an independent trial (beta-binomial sequence on events)",
        figures=(Figure(what=f"false promotion ({events} events per key at {agreement:g})",
                        gate=gate, naive=naive, target=0.05),),
    )


def _keys_check(draws: Draws, verdicts: Verdicts, events: int, correlation: float,
                agreement: float, setting: GateSetting) -> Callable[[int], tuple[bool, bool]]:
    """The check of a run of keys of ``events`` events from zero."""
    t = [0, 0, 0]  # keys, agreeing keys, agreeing events

    def check(keys: int) -> tuple[bool, bool]:
        batch, t[0] = keys - t[0], keys
        agreeing, agreeing_events = draw_keys(draws, batch, events, correlation, agreement)
        t[1] += agreeing
        t[2] += agreeing_events
        compared = keys * events
        return (keys >= setting.min_compared and verdicts.gate(t[1], keys),
                compared >= setting.min_compared and verdicts.naive(t[2], compared))

    return check


# -- a small segment ----------------------------------------------------------------


def small_segment(runs: int, seed: int, *, share: float = 0.10, segment: float = 0.75,
                  rest: float = 0.95, floor: float = 0.85, min_samples: int = 200,
                  setting: GateSetting = SEGMENT_SETTING) -> ScenarioResult:
    """A segment of ``share`` of the keys at ``segment`` under its ``floor``; the rest
    at ``rest``, so that the whole clears the threshold."""
    _positive(runs, "runs")
    for name, value in (("share", share), ("segment", segment), ("rest", rest),
                        ("floor", floor)):
        _unit(value, name)
    draws = Draws(random.Random(seed))
    overall, floors = Verdicts(setting.threshold, setting.alpha), Verdicts(floor, setting.alpha)
    segments = _Segment(share, segment, rest, floor, min_samples)
    firsts = [_run(setting, segments.check(draws, overall, floors, setting))
              for _ in range(runs)]
    gate, naive = _rates(firsts)
    whole = share * segment + (1 - share) * rest
    return ScenarioResult(
        name="small-segment", runs=runs, seed=seed,
        setting=(f"{share:.0%} of keys in a segment at {segment:g} (floor {floor:g}, "
                 f"min_samples {min_samples}), the rest at {rest:g} (overall {whole:.3f}); "
                 f"threshold {setting.threshold:g}, min_compared {setting.min_compared}, "
                 f"checked every {setting.check_every} keys"),
        naive=("a segment checked only from min_samples compared events, by its point "
               "estimate; overall beta-binomial"),
        figures=(Figure(what=f"promoted with the segment at {segment:g} < floor {floor:g}",
                        gate=gate, naive=naive, target=0.05),),
    )


@dataclass(frozen=True, slots=True)
class _Segment:
    share: float
    agreement: float
    rest: float
    floor: float
    min_samples: int

    def check(self, draws: Draws, overall: Verdicts, floors: Verdicts,
              setting: GateSetting) -> Callable[[int], tuple[bool, bool]]:
        """The check of a run from zero."""
        t = [0, 0, 0, 0]  # keys, agreed, segment keys, segment agreed

        def check(keys: int) -> tuple[bool, bool]:
            batch, t[0] = keys - t[0], keys
            in_segment = draws.binomial(batch, self.share)
            segment_agreed = draws.binomial(in_segment, self.agreement)
            t[1] += segment_agreed + draws.binomial(batch - in_segment, self.rest)
            t[2] += in_segment
            t[3] += segment_agreed
            enough = keys >= setting.min_compared
            # The gate: the segment must be shown above its floor, so a small one holds.
            gate = (enough and t[2] >= self.min_samples and overall.gate(t[1], keys)
                    and floors.gate(t[3], t[2]))
            # Naive: a segment below min_samples is not looked at; then its point estimate.
            naive = (enough and overall.naive(t[1], keys)
                     and (t[2] < self.min_samples or t[3] >= self.floor * t[2]))
            return gate, naive

        return check


# -- a good candidate -------------------------------------------------------------------


def good(runs: int, seed: int, *, agreement: float = 0.95,
         setting: GateSetting = GateSetting()) -> ScenarioResult:
    """A candidate well above the threshold: how many keys until it is promoted."""
    _positive(runs, "runs")
    _unit(agreement, "agreement")
    draws, verdicts = Draws(random.Random(seed)), Verdicts(setting.threshold, setting.alpha)
    firsts = [_run(setting, _single(draws, verdicts, agreement, setting)) for _ in range(runs)]
    promoted_gate, promoted_naive = _rates(firsts)
    return ScenarioResult(
        name="good", runs=runs, seed=seed,
        setting=(f"true agreement {agreement:g}, one event per key, instant labels, threshold "
                 f"{setting.threshold:g}, checked every {setting.check_every} keys"),
        naive="beta-binomial sequence (the old default)",
        figures=(
            Figure(what=f"median compared keys to promotion (at {agreement:g})",
                   gate=median([g for g, _ in firsts], "keys"),
                   naive=median([n for _, n in firsts], "keys"), target=300),
            Figure(what=f"promoted within {setting.max_keys:,} keys", gate=promoted_gate,
                   naive=promoted_naive),
        ),
    )


def _single(draws: Draws, verdicts: Verdicts, agreement: float,
            setting: GateSetting) -> Callable[[int], tuple[bool, bool]]:
    """The check of a run of single-event keys from zero."""
    t = [0, 0]  # keys, agreed

    def check(keys: int) -> tuple[bool, bool]:
        batch, t[0] = keys - t[0], keys
        t[1] += draws.binomial(batch, agreement)
        enough = keys >= setting.min_compared
        return enough and verdicts.gate(t[1], keys), enough and verdicts.naive(t[1], keys)

    return check


# -- the candidate changes ----------------------------------------------------------------


def candidate_change(runs: int, seed: int, *, old: float = 0.95, new: float = 0.85,
                     before_change: int = 500,
                     setting: GateSetting = GateSetting()) -> ScenarioResult:
    """The old version is promoted from shadow; ``before_change`` keys into the next
    step a new version replaces it and the rollout restarts from shadow.

    The gate counts the new version from zero. The naive column keeps the old
    version's comparisons of the interrupted step in the counts (what pooling
    by candidate name, not version, would do).
    """
    _positive(runs, "runs")
    _unit(old, "old")
    _unit(new, "new")
    if before_change < 0:
        raise ParameterError("before_change", f"must not be negative, got {before_change}")
    draws, verdicts = Draws(random.Random(seed)), Verdicts(setting.threshold, setting.alpha)
    olds, news = [], []
    for _ in range(runs):
        olds.append(_run(setting, _single(draws, verdicts, old, setting)))
        carried = draws.binomial(before_change, old) if before_change else 0
        gate = _run(setting, _single(draws, verdicts, new, setting))[0]
        pooled = _pooled(draws, verdicts, new, setting, carried, before_change)
        news.append((gate, pooled))
    old_gate, old_naive = _rates(olds)
    new_gate, new_naive = _rates(news)
    return ScenarioResult(
        name="candidate-change", runs=runs, seed=seed,
        setting=(f"old version at {old:g} promoted from shadow; {before_change} keys into the "
                 f"next step a new version at {new:g} restarts the rollout from shadow"),
        naive="beta-binomial on events; for the new version, the step's counts kept (pooled)",
        figures=(
            Figure(what=f"old version ({old:g}) promoted from shadow", gate=old_gate,
                   naive=old_naive),
            Figure(what=f"new version ({new:g}) promoted after the change", gate=new_gate,
                   naive=new_naive, target=0.05,
                   naive_is=f"counts not restarted: {before_change} keys of the old version kept"),
        ),
    )


def _pooled(draws: Draws, verdicts: Verdicts, agreement: float, setting: GateSetting,
            carried: int, carried_keys: int) -> float:
    """Keys of the new version at which the naive gate passes on pooled counts."""
    keys, agreed = 0, carried
    while keys < setting.max_keys:
        batch = min(setting.check_every, setting.max_keys - keys)
        keys += batch
        agreed += draws.binomial(batch, agreement)
        total = keys + carried_keys
        if total >= setting.min_compared and verdicts.naive(agreed, total):
            return keys
    return math.inf


# -- checks -------------------------------------------------------------------------------


def _positive(value: int, name: str) -> None:
    if value < 1:
        raise ParameterError(name, f"must be a positive count, got {value}")


def _unit(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ParameterError(name, f"must be between 0 and 1, got {value}")
