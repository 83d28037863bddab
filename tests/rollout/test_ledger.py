"""The ledger's running counts against a recount of its units, after random histories."""

from __future__ import annotations

import math
import random

import pytest

from rollout.histogram import Histogram
from rollout.ledger import Ledger, Totals, UnitRow
from shadow.config.rollout import Unit

SEGMENTS = [("language", "en"), ("language", "de"), ("tier", "pro")]


def recount(ledger: Ledger) -> tuple[Totals, dict[tuple[str, str], Totals], int, int]:
    """The totals by the definition, from each unit's final state and the cutoffs."""
    totals, segments = Totals(), {s: Totals() for s in SEGMENTS}
    dependent = expired = 0
    for row in ledger.units.values():
        mature = row.occurred_at <= ledger.mature_cutoff
        lapsed = row.agree is None and mature and row.occurred_at <= ledger.expiry_cutoff
        dependent += row.agree is not None and not row.independent
        expired += lapsed
        if not (row.eligible and mature):
            continue
        if (row.independent if row.agree is not None else not lapsed):
            for t in (totals, *(segments[s] for s in row.segments)):
                t.mature += 1
                if row.agree is not None:
                    t.labelled += 1
                    t.agreed += row.agree
    return totals, segments, dependent, expired


def history(seed: int, unit: Unit) -> Ledger:
    rng = random.Random(seed)
    ledger = Ledger(unit=unit)
    events: list[tuple[str, str, float]] = []
    now = 0.0
    for step in range(3000):
        now += rng.expovariate(1.0)
        action = rng.random()
        if action < 0.4 or not events:
            key = f"k{rng.randrange(600)}"
            event_id = f"e{step}"
            occurred = now - rng.uniform(0, 50)  # out of order, as real traffic is
            shadow = rng.random() < 0.7
            row = UnitRow(key=key, event_id=event_id, occurred_at=occurred, shadow=shadow,
                          eligible=shadow or rng.random() < 0.5,
                          segments=tuple(s for s in SEGMENTS if rng.random() < 0.5))
            if not ledger.add_unit(row):
                ledger.add_event(event_id, key, occurred)
            events.append((event_id, key, occurred))
        elif action < 0.85:
            event_id, _, occurred = rng.choice(events)
            ledger.label(event_id, rng.random() < 0.85, now + rng.uniform(0, 5), occurred,
                         rng.random() < 0.3)
        else:
            ledger.advance(rng.uniform(0, 80), None if rng.random() < 0.2
                           else rng.uniform(80, 300))
    return ledger


@pytest.mark.parametrize("unit", list(Unit))
@pytest.mark.parametrize("seed", range(6))
def test_the_running_counts_equal_a_recount(seed: int, unit: Unit) -> None:
    ledger = history(seed, unit)
    totals, segments, dependent, expired = recount(ledger)
    assert (ledger.totals.mature, ledger.totals.labelled) == (totals.mature, totals.labelled)
    assert ledger.totals.agreed == pytest.approx(totals.agreed)
    for segment, expected in segments.items():
        got = ledger.segments.get(segment, Totals())
        assert (got.mature, got.labelled) == (expected.mature, expected.labelled)
        assert got.agreed == pytest.approx(expected.agreed)
    assert (ledger.dependent, ledger.expired) == (dependent, expired)
    assert totals.mature > 50 and totals.labelled > 20  # the history exercised the counts


def test_labels_are_numbered_in_arrival_order_and_fed_only_when_independent() -> None:
    ledger = Ledger()
    for i in range(4):
        ledger.add_unit(UnitRow(key=f"k{i}", event_id=f"e{i}", occurred_at=float(i),
                                shadow=i % 2 == 0, eligible=True))
    for i in (2, 0, 3, 1):
        ledger.label(f"e{i}", i != 3, 10.0 + i, float(i), independent=False)
    ledger.label("e2", False, 20.0, 2.0, independent=False)  # a later outcome: same number
    assert [ledger.units[f"k{i}"].seq for i in range(4)] == [2, 4, 1, 3]
    assert ledger.feed == [(1, "k2", True), (2, "k0", True)]  # shadow keys only
    assert ledger.units["k2"].agree == 0.0


def test_a_last_unit_takes_the_last_prediction_made_before_the_decision() -> None:
    ledger = Ledger(unit=Unit.LAST)
    ledger.add_unit(UnitRow(key="k", event_id="e1", occurred_at=1.0, shadow=True,
                            eligible=True))
    ledger.add_event("e2", "k", 5.0)
    ledger.add_event("e3", "k", 9.0)
    ledger.label("e1", False, 6.0, 1.0, independent=False)
    ledger.label("e2", True, 6.0, 5.0, independent=False)
    ledger.label("e3", False, 6.0, 9.0, independent=False)  # made after the decision
    assert ledger.units["k"].agree == 1.0


def test_a_mean_unit_averages_its_compared_predictions() -> None:
    ledger = Ledger(unit=Unit.MEAN)
    ledger.add_unit(UnitRow(key="k", event_id="e1", occurred_at=1.0, shadow=True,
                            eligible=True))
    for i, agree in enumerate([True, False, True, True], start=1):
        if i > 1:
            ledger.add_event(f"e{i}", "k", float(i))
        ledger.label(f"e{i}", agree, 10.0, float(i), independent=False)
    assert ledger.units["k"].agree == pytest.approx(0.75)
    assert ledger.labels == 1  # one key, one label number


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99])
def test_histogram_quantiles_are_within_a_bin_of_the_exact_ones(q: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.5) for _ in range(20_000)]
    histogram = Histogram()
    for v in values:
        histogram.add(v)
    exact = sorted(values)[math.ceil(q * len(values)) - 1]  # the nearest-rank quantile
    got = histogram.quantile(q)
    assert got is not None and exact <= got <= exact * 1.002 * 1.000001
