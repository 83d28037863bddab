"""Drift statistics against values computed independently here, from the generated data."""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.errors import ConfigError
from shadow.core.fixed_sample import chi2_sf, kolmogorov_sf
from shadow.pipeline.runner import Pipeline
from shadow.reports.drift import (
    PAYLOAD_LENGTH,
    DriftReport,
    DriftThresholds,
    Window,
    drift_metrics,
    first_days,
    last_days,
    measure_drift,
    period,
    pool_cells,
)
from shadow.store.database import Store
from shadow.testing import ListSource

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = START + timedelta(days=10)
N_REF, N_CUR = 600, 400


def reference_row(i: int) -> dict[str, Any]:
    """Languages 60/30/10 %, channel email/chat, amounts 0..99 uniform."""
    language = "en" if i % 10 < 6 else "de" if i % 10 < 9 else "fr"
    return {"segment": {"language": language, "channel": "email" if i % 2 else "chat"},
            "payload": {"amount": i % 100, "text": "x" * (i % 7)},
            "outcome": ["billing", "login", "refund"][i % 3]}


def current_row(i: int) -> dict[str, Any]:
    """Languages 45/35/20 %, a new channel, amounts shifted by 30, new outcome labels."""
    language = "en" if i % 20 < 9 else "de" if i % 20 < 16 else "fr"
    channel = "phone" if i % 8 == 0 else "email" if i % 2 else "chat"
    amount: Any = (i % 100) + 30
    if i % 50 == 7:
        amount = "n/a"  # not a number: left out of the amount statistics
    outcome = "shipping" if i % 10 == 0 else "fraud" if i % 25 == 1 else ["billing", "login"][i % 2]
    return {"segment": {"language": language, "channel": channel},
            "payload": {"amount": amount, "text": "x" * (i % 11)}, "outcome": outcome}


def build(db: Path, ref: list[dict[str, Any]], cur: list[dict[str, Any]],
          wrap: bool = False) -> Store:
    rows = [(START + timedelta(seconds=i), r, f"r{i}") for i, r in enumerate(ref)]
    rows += [(LATER + timedelta(seconds=i), r, f"c{i}") for i, r in enumerate(cur)]
    events = [{"event_id": key, "key": key, "occurred_at": at.isoformat(),
               "segment": r["segment"], "payload": r["payload"]} for at, r, key in rows]
    outcomes = [{"key": key, "decided_at": (at + timedelta(minutes=5)).isoformat(),
                 "outcome": {"label": r["outcome"]} if wrap else r["outcome"]}
                for at, r, key in rows]
    store = Store(db)
    store.open()
    candidate = CallableCandidate(lambda event: "billing", name="triage", version="1")
    clock = iter(START + timedelta(seconds=s) for s in range(10**6))

    def now() -> datetime:
        return next(clock)

    with candidate:
        Pipeline(store, candidate, build_comparator(ExactSpec()), batch_size=250, now=now).run(
            [ListSource(events, name="events")], [ListSource(outcomes, name="outcomes")])
    return store


REF = [reference_row(i) for i in range(N_REF)]
CUR = [current_row(i) for i in range(N_CUR)]
REFERENCE = Window(START, START + timedelta(days=1))
CURRENT = Window(LATER, LATER + timedelta(days=1))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store = build(tmp_path_factory.mktemp("drift") / "store.duckdb", REF, CUR)
    yield store
    store.close()


@pytest.fixture(scope="module")
def report(store: Store) -> DriftReport:
    return measure_drift(store, reference=first_days(store, 1), current=CURRENT,
                         numeric_fields=["amount"])


# -- independent computations --------------------------------------------------------


def shares(values: list[str]) -> dict[str, float]:
    counts = Counter(values)
    return {v: n / len(values) for v, n in counts.items()}


def chi2_by_hand(cells: list[tuple[int, float]]) -> float:
    return sum((o - e) ** 2 / e for o, e in cells)


def psi_by_hand(ref: list[float], cur: list[float], bins: int = 10) -> float:
    ordered = sorted(ref)
    n = len(ordered)
    # The reference quantile i/bins: the smallest value whose empirical CDF reaches it.
    edges = sorted({ordered[math.ceil(i * n / bins) - 1] for i in range(1, bins)})
    ref_bins = Counter(bisect.bisect_left(edges, v) for v in ref)
    cur_bins = Counter(bisect.bisect_left(edges, v) for v in cur)
    total = 0.0
    for k in range(len(edges) + 1):
        p = max(ref_bins[k] / len(ref), 1e-4)
        q = max(cur_bins[k] / len(cur), 1e-4)
        total += (q - p) * math.log(q / p)
    return total


def ks_by_hand(ref: list[float], cur: list[float]) -> float:
    a, b = sorted(ref), sorted(cur)
    return max(abs(bisect.bisect_right(a, x) / len(a) - bisect.bisect_right(b, x) / len(b))
               for x in a + b)


def amounts(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r["payload"]["amount"]) for r in rows
            if isinstance(r["payload"]["amount"], int | float)]


def lengths(rows: list[dict[str, Any]]) -> list[float]:
    return [float(len(json.dumps(r["payload"], separators=(",", ":")))) for r in rows]


# -- the statistics ------------------------------------------------------------------


def test_windows_count_their_events(report: DriftReport) -> None:
    out = report.as_dict()
    assert out["reference"]["events"] == N_REF
    assert out["current"]["events"] == N_CUR
    assert out["reference"]["start"] == START.isoformat()


def test_segment_mix_chi2_without_pooling(report: DriftReport) -> None:
    (language,) = [s for s in report.segments if s.field == "language"]
    ref = shares([r["segment"]["language"] for r in REF])
    observed = Counter(r["segment"]["language"] for r in CUR)
    cells = [(observed[v], N_CUR * ref[v]) for v in ("en", "de", "fr")]
    assert all(e >= 5 for _, e in cells)
    expected = chi2_by_hand(cells)
    assert language.chi2 == pytest.approx(expected, rel=1e-12)
    assert language.dof == 2
    # With two degrees of freedom the survival function is exactly exp(-x / 2).
    assert language.p_value == pytest.approx(math.exp(-expected / 2), rel=1e-9)
    assert language.reference == pytest.approx(ref)
    assert language.current == pytest.approx(shares([r["segment"]["language"] for r in CUR]))
    assert language.pooled == ()


def test_new_segment_value_is_pooled_with_the_smallest_cell(report: DriftReport) -> None:
    (channel,) = [s for s in report.segments if s.field == "channel"]
    observed = Counter(r["segment"]["channel"] for r in CUR)
    ref = shares([r["segment"]["channel"] for r in REF])
    # "phone" was never seen: expected 0 < 5, so it is pooled; the pool is still
    # below 5 and joins the smaller of email and chat (equal here: "chat" sorts first).
    cells = [(observed["email"], N_CUR * ref["email"]),
             (observed["chat"] + observed["phone"], N_CUR * ref["chat"])]
    expected = chi2_by_hand(cells)
    assert channel.pooled == ("chat", "phone")
    assert channel.dof == 1
    assert channel.chi2 == pytest.approx(expected, rel=1e-12)
    # One degree of freedom: the survival function is erfc(sqrt(x / 2)).
    assert channel.p_value == pytest.approx(math.erfc(math.sqrt(expected / 2)), rel=1e-6)
    assert channel.current["phone"] == pytest.approx(observed["phone"] / N_CUR)


def test_amount_psi_and_ks_against_hand_computed(report: DriftReport) -> None:
    (amount,) = [n for n in report.numeric if n.field == "amount"]
    ref, cur = amounts(REF), amounts(CUR)
    assert (amount.reference_n, amount.current_n) == (len(ref), len(cur)) == (600, 392)
    assert amount.psi == pytest.approx(psi_by_hand(ref, cur), rel=1e-12)
    assert amount.ks == pytest.approx(ks_by_hand(ref, cur), rel=1e-12)
    assert amount.psi is not None and amount.psi > 0.25


def test_payload_length_psi_and_ks_against_hand_computed(report: DriftReport) -> None:
    (length,) = [n for n in report.numeric if n.field == PAYLOAD_LENGTH]
    ref, cur = lengths(REF), lengths(CUR)
    assert (length.reference_n, length.current_n) == (N_REF, N_CUR)
    assert length.psi == pytest.approx(psi_by_hand(ref, cur), rel=1e-12)
    assert length.ks == pytest.approx(ks_by_hand(ref, cur), rel=1e-12)


def test_ks_p_value_uses_the_effective_sample_size(report: DriftReport) -> None:
    (amount,) = [n for n in report.numeric if n.field == "amount"]
    assert amount.ks is not None
    ne = 600 * 392 / (600 + 392)
    lam = (math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * amount.ks
    series = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 50))
    assert amount.ks_p_value == pytest.approx(series, rel=1e-6, abs=1e-300)


def test_new_outcome_share(report: DriftReport) -> None:
    seen = {r["outcome"] for r in REF}
    current = [r["outcome"] for r in CUR]
    new = Counter(v for v in current if v not in seen)
    assert report.new_outcome_share == pytest.approx(sum(new.values()) / len(current))
    assert list(report.new_outcomes) == sorted(new.items(), key=lambda kv: (-kv[1], kv[0]))


def test_new_outcome_share_at_a_label_path(tmp_path: Path) -> None:
    store = build(tmp_path / "s.duckdb", REF, CUR, wrap=True)
    try:
        labelled = measure_drift(store, reference=REFERENCE, current=CURRENT,
                                 outcome_label="label")
        whole = measure_drift(store, reference=REFERENCE, current=CURRENT)
    finally:
        store.close()
    seen = {r["outcome"] for r in REF}
    new = sum(1 for r in CUR if r["outcome"] not in seen)
    assert labelled.new_outcome_share == pytest.approx(new / N_CUR)
    # The whole outcome {"label": ...} is the category when no label path is given.
    assert whole.new_outcome_share == pytest.approx(new / N_CUR)


def test_drift_is_detected_and_explained(report: DriftReport) -> None:
    out = report.as_dict()
    assert out["drifted"] is True
    assert out["max_psi"] == max(n["psi"] for n in out["numeric"])
    assert any("amount" in reason for reason in out["reasons"])
    assert any("new categories" in reason for reason in out["reasons"])
    json.dumps(out)  # serialisable as it is


def test_thresholds_are_configurable(store: Store) -> None:
    lax = DriftThresholds(psi=100.0, p_value=0.0, new_outcome_share=1.0)
    report = measure_drift(store, reference=REFERENCE, current=CURRENT,
                           numeric_fields=["amount"], thresholds=lax)
    assert report.drifted is False
    assert report.reasons == []


def test_metrics_are_shaped_for_gauges(report: DriftReport) -> None:
    metrics = drift_metrics(report)
    by_key = {(name, tuple(sorted(labels.items()))): value for name, labels, value in metrics}
    (amount,) = [n for n in report.numeric if n.field == "amount"]
    assert by_key[("shadow_drift_psi", (("field", "amount"),))] == amount.psi
    assert ("shadow_drift_chi2_p_value", (("field", "language"),)) in by_key
    assert by_key[("shadow_drift_new_outcome_share", ())] == report.new_outcome_share
    assert by_key[("shadow_drift_detected", ())] == 1.0


# -- no drift ------------------------------------------------------------------------


def test_same_data_in_both_windows_shows_no_drift(tmp_path: Path) -> None:
    store = build(tmp_path / "same.duckdb", REF, REF)
    try:
        report = measure_drift(store, reference=first_days(store, 1),
                               current=period(LATER, LATER + timedelta(days=1)),
                               numeric_fields=["amount"])
    finally:
        store.close()
    for segment in report.segments:
        assert segment.chi2 == pytest.approx(0.0, abs=1e-12)
        assert segment.p_value == pytest.approx(1.0)
    for numeric in report.numeric:
        assert numeric.psi == pytest.approx(0.0, abs=1e-12)
        assert numeric.ks == pytest.approx(0.0, abs=1e-12)
        assert numeric.ks_p_value == pytest.approx(1.0)
    assert report.new_outcome_share == 0.0
    assert report.drifted is False


def test_empty_current_window_has_no_statistics(store: Store) -> None:
    empty = Window(LATER + timedelta(days=5), LATER + timedelta(days=6))
    report = measure_drift(store, reference=REFERENCE, current=empty, numeric_fields=["amount"])
    assert report.current_events == 0
    assert all(s.chi2 is None and s.p_value is None for s in report.segments)
    assert all(n.psi is None and n.ks is None for n in report.numeric)
    assert report.new_outcome_share is None
    assert report.drifted is False
    assert drift_metrics(report) == [("shadow_drift_detected", {}, 0.0)]


# -- windows ---------------------------------------------------------------------------


def test_first_and_last_days(store: Store) -> None:
    assert first_days(store, 2) == Window(START, START + timedelta(days=2))
    now = LATER + timedelta(hours=3)
    assert last_days(store, 1, now=now) == Window(now - timedelta(days=1), now)


def test_windows_refuse_naive_and_empty_intervals() -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        Window(datetime(2026, 1, 1), datetime(2026, 1, 2))  # noqa: DTZ001
    with pytest.raises(ConfigError, match="end after"):
        period(LATER, START)


# -- distributions against table values ----------------------------------------------------


@pytest.mark.parametrize(("x", "dof", "p"), [
    (3.841, 1, 0.05), (6.635, 1, 0.01), (10.828, 1, 0.001), (5.991, 2, 0.05),
    (18.307, 10, 0.05), (23.209, 10, 0.01), (43.773, 30, 0.05), (124.342, 100, 0.05),
    (0.004, 1, 0.95), (3.940, 10, 0.95),
])
def test_chi2_survival_matches_tables(x: float, dof: int, p: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(p, rel=2e-3)


def test_chi2_survival_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(1e4, 3) == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize(("lam", "p"), [(1.224, 0.10), (1.358, 0.05), (1.628, 0.01),
                                         (1.949, 0.001)])
def test_kolmogorov_survival_matches_tables(lam: float, p: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(p, rel=1e-2)


def test_pooling_rule_by_hand() -> None:
    cells, pooled = pool_cells({"a": 50, "b": 40, "c": 3, "d": 7},
                               {"a": 45.0, "b": 45.0, "c": 4.0, "d": 6.0})
    # c (expected 4) is pooled; the pool (4) is still below 5 and joins d, the smallest.
    assert pooled == ("c", "d")
    assert cells == {"a": (50, 45.0), "b": (40, 45.0), "(other)": (10, 10.0)}


def test_pooling_keeps_a_large_enough_pool() -> None:
    cells, pooled = pool_cells({"a": 50, "b": 40, "c": 3, "d": 4},
                               {"a": 45.0, "b": 45.0, "c": 3.0, "d": 4.0})
    assert pooled == ("c", "d")
    assert cells == {"a": (50, 45.0), "b": (40, 45.0), "(other)": (7, 7.0)}


def test_measure_refuses_too_few_bins(store: Store) -> None:
    with pytest.raises(ConfigError, match="bins"):
        measure_drift(store, reference=REFERENCE, current=CURRENT, bins=1)
