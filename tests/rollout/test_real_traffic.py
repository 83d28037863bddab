"""The gates on real traffic, through the real pipeline (sources → store → compare →
controller): keys with several events, late labels, live outcomes that echo the AI,
a small bad segment, a restart mid-step, batch sizes, inconsistent rollback levels.

Every expected value is computed here from the generated data (keys counted, the
one-sided mixture integrated numerically, the CUSUM written out, the router's hash
recomputed) in :mod:`tests.rollout.traffic`, never by the code under test.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollout.state import Action, Status
from shadow.config.rollout import RolloutSpec
from tests.cli.test_cli import run as run_cli
from tests.rollout.traffic import (
    Case,
    Detector,
    Rounds,
    TrafficRun,
    binomial_bound,
    cases,
    flat,
    held_out,
    naive_low_at_least,
    plan,
    rounds,
    shown_above,
    sources,
)

EVERY_MINUTE = timedelta(minutes=1)


def agreed(found: Sequence[Case], n: int) -> int:
    """Agreeing keys among the first ``n`` (keys mature in the order they occurred)."""
    return sum(c.agrees for c in found[:n])


def actions(p: TrafficRun) -> list[tuple[Action, int | None, int, Status]]:
    return [(r.action, r.from_step, r.to_step, r.to_status) for r in p.history()]


# -- one vote per key -------------------------------------------------------------------


def test_a_key_with_five_events_is_one_vote_and_promotes_when_the_integral_says(
    tmp_path: Path,
) -> None:
    found = cases(600, agreement=0.95, seed=5, events=5)
    p = TrafficRun(tmp_path / "s.duckdb", plan(label_window="1m"), found)
    p.open()
    try:
        p.run(*sources(found, timedelta(minutes=20)))
        evaluations = p.evaluations()
        history = p.history()
    finally:
        p.close()

    judged = [e["agreement"]["n"] for e in evaluations]
    # One vote per key, evaluated every 100 newly labelled keys: 3,000 events never show.
    assert all(n < len(found) for n in judged), judged
    assert [b - a for a, b in zip(judged, judged[1:], strict=False)] == [100] * (len(judged) - 1)
    for e in evaluations:
        n = e["agreement"]["n"]
        assert e["labels"]["value"] == 1.0
        assert round(e["agreement"]["value"] * n) == agreed(found, n), n
    first = next(i for i, e in enumerate(evaluations) if e["phase"] == "pass")
    assert first > 0
    n, before = judged[first], judged[first - 1]
    assert shown_above(agreed(found, n), n, 0.9)
    assert not shown_above(agreed(found, before), before, 0.9)
    assert evaluations[first - 1]["agreement"]["phase"] != "pass"
    (promotion,) = [r for r in history if r.action is Action.PROMOTE]
    (check,) = [c for c in promotion.evidence["checks"] if c["name"] == "agreement"]
    assert check["n"] == n


def test_keys_at_the_threshold_are_rarely_promoted_where_counting_events_would(
    tmp_path: Path,
) -> None:
    runs, keys, events = 15, 800, 5
    promoted = naive = 0
    for seed in range(runs):
        found = cases(keys, agreement=0.90, seed=seed, events=events)
        p = TrafficRun(tmp_path / f"{seed}.duckdb", plan(label_window="1m"), found)
        p.open()
        try:
            p.run(*sources(found, timedelta(minutes=20)))
            judged = [e["agreement"]["n"] for e in p.evaluations()]
            went = any(r.action is Action.PROMOTE for r in p.history())
        finally:
            p.close()
        # The gate's decision is the one-sided integral over the keys it judged.
        assert went == any(shown_above(agreed(found, n), n, 0.9) for n in judged), seed
        promoted += went
        # The same looks, counting every event as a trial (the old gate).
        naive += any(naive_low_at_least(events * agreed(found, n), events * n, 0.9)
                     for n in judged)
    bound = binomial_bound(runs, 0.05)  # 3 of 15: P(more than 3 at a 5 % rate) ≤ 1 %
    assert promoted <= bound, (promoted, bound)
    assert naive > promoted, (naive, promoted)


# -- late labels ------------------------------------------------------------------------


def late(agrees: bool, rng: random.Random) -> timedelta:
    """Agreements labelled after an hour on average, disagreements after ten."""
    return timedelta(minutes=rng.expovariate(1 / (60 if agrees else 600)))


@pytest.mark.parametrize("window", ["2h", "auto"])
def test_late_disagreements_never_promote_a_candidate_below_the_threshold(
    tmp_path: Path, window: str
) -> None:
    found = cases(2000, agreement=0.88, seed=7, delay=late)
    p = TrafficRun(tmp_path / "s.duckdb", plan(label_window=window), found,
                 probe_every=4)
    p.open()
    try:
        p.run(*sources(found, timedelta(minutes=50)))
        assert p.controller is not None and p.controller.state.step == 0
        history = p.history()
    finally:
        p.close()
    assert not [r for r in history if r.action is Action.PROMOTE]
    evidence = [v["evidence"] for v in p.probes]
    assert max(e["unlabelled_counted_against"] for e in evidence) > 0
    assert any("disagreements are labelled later than agreements" in w
               for v in p.probes for w in v["warnings"])
    # The scenario matters: a gate counting whatever is labelled so far would have passed.
    passed_naively = False
    for e in evidence:
        clock = datetime.fromisoformat(e["data_clock"]) - timedelta(minutes=50)
        labelled = [c for c in found if c.decided_at <= clock]
        passed_naively |= shown_above(sum(c.agrees for c in labelled), len(labelled), 0.9)
    assert passed_naively


# -- independent outcomes in live steps ---------------------------------------------------

DROP = 600


def dropping(i: int, tier: str) -> float:
    return 0.95 if i < DROP else 0.80


def live_run(tmp_path: Path, found: list[Case], **extra: Any) -> TrafficRun:
    p = TrafficRun(tmp_path / "s.duckdb", plan(**extra), found)
    p.open()
    p.force_live()
    p.run(*sources(found, timedelta(minutes=100)))
    return p


def test_live_outcomes_echoing_the_ai_are_left_to_the_holdout_which_catches_a_drop(
    tmp_path: Path,
) -> None:
    found = cases(3600, agreement=dropping, seed=3,
                  echo=lambda i: not held_out(f"k{i:05d}", 0.05))
    held = [c for c in found if held_out(c.key, 0.05)]
    _, seen, alarm = Detector().run(c.agrees for c in held)
    assert alarm is not None and held[alarm - 1].index >= DROP  # the data has a drop to catch
    p = live_run(tmp_path, found, holdout=0.05)
    try:
        history = p.history()
    finally:
        p.close()
    (back,) = [r for r in history if r.action is Action.ROLLBACK]
    counted = back.evidence["counted"]
    held_keys = {c.key for c in held}
    assert counted["keys"] and set(counted["keys"]) <= held_keys
    assert counted["alarmed_at"] == alarm and counted["labels_seen"] == seen
    assert counted["keys"][-1] == held[alarm - 1].key


def test_without_a_holdout_echoing_live_outcomes_feed_no_detector(tmp_path: Path) -> None:
    found = cases(2000, agreement=dropping, seed=3, echo=lambda i: True)
    p = live_run(tmp_path, found, holdout=0.0)
    try:
        history = p.history()
        statistic, seen, alarmed_at, labels, _ = p.progress()
        evidence = p.status()["evidence"]
    finally:
        p.close()
    assert not [r for r in history if r.action is Action.ROLLBACK]
    assert (statistic, seen, alarmed_at) == (0, 0, None) and labels == len(found)
    assert evidence["live_not_independent"] == len(found) and evidence["past_label_window"] == 0


def test_live_outcomes_of_a_declared_independent_source_count(tmp_path: Path) -> None:
    found = cases(1500, agreement=dropping, seed=3)
    _, seen, alarm = Detector().run(c.agrees for c in found)
    assert alarm is not None and alarm > DROP
    p = live_run(tmp_path, found, independent_sources=["outcomes"])
    try:
        history = p.history()
    finally:
        p.close()
    (back,) = [r for r in history if r.action is Action.ROLLBACK]
    counted = back.evidence["counted"]
    assert counted["alarmed_at"] == alarm and counted["labels_seen"] == seen
    assert counted["keys"][-1] == found[alarm - 1].key
    # Live keys count: far more of them than a 5 % holdout would have given.
    assert len(counted["keys"]) > 20 and set(counted["keys"]) <= {c.key for c in found}


# -- a small bad segment -----------------------------------------------------------------


def tiered(rng: random.Random) -> str:
    return "small" if rng.random() < 0.10 else "main"


def by_tier(i: int, tier: str) -> float:
    return 0.75 if tier == "small" else 0.95


def small(found: Sequence[Case], n: int) -> int:
    return sum(c.segment == "small" for c in found[:n])


def segment_plan(**segments: Any) -> RolloutSpec:
    return plan(label_window="1m",
                steps=[{"percent": 0, "min_compared": 500}, {"percent": 100}],
                gates={"agreement": 0.9,
                       "segments": {"min_samples": 200, "floors": {"tier=small": 0.85},
                                    **segments}})


def test_a_small_segment_below_its_floor_holds_the_step(tmp_path: Path) -> None:
    found = cases(3000, agreement=by_tier, seed=9, segment=tiered)
    p = TrafficRun(tmp_path / "s.duckdb", segment_plan(), found)
    p.open()
    try:
        p.run(*sources(found, timedelta(minutes=100)))
        evaluations = p.evaluations()
        history = p.history()
        status = p.status()
    finally:
        p.close()
    assert not [r for r in history if r.action is Action.PROMOTE]
    assert all(e["phase"] != "pass" for e in evaluations)
    name = "segment tier=small"
    for e in evaluations:
        n = e["agreement"]["n"]
        assert e[name]["n"] == small(found, n)
        if small(found, n) < 200:
            assert e[name]["phase"] == "inconclusive" and "of the 200 needed" in e[name]["detail"]
    # The segment is what held it: overall agreement was shown above 0.90 meanwhile.
    held = [e for e in evaluations if e["agreement"]["phase"] == "pass"]
    assert held and shown_above(agreed(found, held[0]["agreement"]["n"]),
                                held[0]["agreement"]["n"], 0.9)
    assert small(found, held[0]["agreement"]["n"]) < 200
    assert status["promotion"] is not None
    (check,) = [c for c in status["promotion"]["checks"] if c["name"] == name]
    assert check["phase"] in ("fail", "inconclusive") and "floor 85.00%" in check["detail"]


def test_allow_small_lets_a_step_pass_with_a_segment_under_min_samples(tmp_path: Path) -> None:
    found = cases(1500, agreement=by_tier, seed=9, segment=tiered)
    p = TrafficRun(tmp_path / "s.duckdb", segment_plan(allow_small=True), found)
    p.open()
    try:
        p.run(*sources(found, timedelta(minutes=100)))
        history = p.history()
    finally:
        p.close()
    (promotion,) = [r for r in history if r.action is Action.PROMOTE]
    checks = {c["name"]: c for c in promotion.evidence["checks"]}
    n = checks["agreement"]["n"]
    assert small(found, n) < 200 and "segment tier=small" not in checks
    assert shown_above(agreed(found, n), n, 0.9)


# -- a restart mid-step ------------------------------------------------------------------

SPLIT = 650
"""Keys before the restart: not a multiple of the 100-key cadence, so labels the
detector has not seen are waiting in the store."""


def steady(i: int) -> bool:
    return i % 20 != 7 and not SPLIT - 4 <= i < SPLIT and not 1190 <= i < 1195


def drop_after_split(i: int) -> bool:
    return steady(i) if i < 700 else i % 5 != 0


@pytest.mark.parametrize("agrees", [steady, drop_after_split], ids=["steady", "drop"])
def test_the_detector_goes_on_after_a_restart_as_if_there_was_none(
    tmp_path: Path, agrees: Callable[[int], bool]
) -> None:
    found = [Case(index=c.index, occurred_at=c.occurred_at, agrees=agrees(c.index),
                  decided_at=c.decided_at) for c in cases(1200, agreement=1.0, seed=0)]
    spec = plan(independent_sources=["outcomes"])
    event_rounds, outcome_rounds = rounds(found, timedelta(minutes=50))
    cut = SPLIT // 50

    once = TrafficRun(tmp_path / "once.duckdb", spec, found)
    once.open()
    once.force_live()
    once.run(Rounds(event_rounds, name="events"), Rounds(outcome_rounds, name="outcomes"))

    twice = TrafficRun(tmp_path / "twice.duckdb", spec, found)
    twice.open()
    twice.force_live()
    twice.pump(Rounds(event_rounds[:cut], name="events"),
               Rounds(outcome_rounds[:cut], name="outcomes"))
    assert twice.progress()[3] == SPLIT and twice.progress()[4] < SPLIT  # labels not yet fed
    twice.close()
    twice.open()  # a new Store and Controller on the same file, the clock moving on
    twice.run(Rounds(event_rounds[cut:], name="events"),
              Rounds(outcome_rounds[cut:], name="outcomes"))
    try:
        assert actions(once) == actions(twice)
        assert once.progress() == twice.progress()
        backs = [(r.evidence["counted"], r.evidence["checks"])
                 for p in (once, twice) for r in p.history() if r.action is Action.ROLLBACK]
        statistic, seen, alarm = Detector().run(agrees(i) for i in range(len(found)))
        if alarm is None:
            assert not backs
            assert once.progress()[:3] == (statistic, seen, None) and statistic > 0
        else:
            assert len(backs) == 2 and backs[0] == backs[1]
            assert backs[0][0]["alarmed_at"] == alarm > 700
    finally:
        once.close()
        twice.close()


# -- evaluation cadence ------------------------------------------------------------------


def test_the_evaluation_cadence_does_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    found = cases(800, agreement=0.95, seed=11)
    labelled_at, judged_at = [], []
    for batch_size in (100, 20_000):
        p = TrafficRun(tmp_path / f"{batch_size}.duckdb", plan(), found, batch_size=batch_size)
        p.open()
        try:
            p.run(*flat(found))
            (promotion,) = [r for r in p.history() if r.action is Action.PROMOTE]
        finally:
            p.close()
        checks = {c["name"]: c for c in promotion.evidence["checks"]}
        labelled_at.append(checks["compared keys"]["value"])
        judged_at.append(checks["agreement"]["n"])
    # The gates are evaluated at every 100th label whatever the batch size (a batch of
    # 20,000 once promoted only after 20,000); a larger batch has seen more events by then,
    # so its data clock, and with it the keys past their label window, may be a key ahead.
    assert abs(labelled_at[0] - labelled_at[1]) <= 5
    for n in judged_at:
        assert n < len(found) - 100 and abs(n - judged_at[0]) <= 5
        assert shown_above(agreed(found, n), n, 0.9)
        assert not shown_above(agreed(found, n - 100), n - 100, 0.9)


# -- inconsistent rollback levels --------------------------------------------------------

CONFIG = """\
version: 1
candidate: {{callable: "triage:classify", name: triage}}
comparator: {{kind: exact}}
store: {{path: shadow.duckdb}}
rollout:
  steps: [{{percent: 0}}, {{percent: 100}}]
  sink: {{kind: file, path: decisions.jsonl}}
  gates: {{agreement: 0.9}}
  rollback: {{{level}}}
"""


@pytest.mark.parametrize(("level", "named"), [("healthy: 0.99", "rollback.healthy"),
                                              ("degraded: 0.95", "rollback.degraded")])
def test_inconsistent_rollback_levels_are_a_configuration_error(
    tmp_path: Path, level: str, named: str
) -> None:
    (tmp_path / "triage.py").write_text("def classify(event):\n    return 'billing'\n")
    (tmp_path / "events.jsonl").write_text(
        '{"event_id": "e1", "key": "k1", "occurred_at": "2026-03-02T09:00:00Z", '
        '"payload": {}}\n')
    (tmp_path / "cfg.yaml").write_text(CONFIG.format(level=level))
    result = run_cli(tmp_path, "replay", "events.jsonl", "--config", "cfg.yaml")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert named in result.stderr
    assert not (tmp_path / "shadow.duckdb").exists()
