"""A tier whose agreement breaks falls back to the next more careful tier, by itself, audited
like a rollback; the other tiers and the rollout go on.

A support desk's agent tags tickets (tier auto) and drafts replies (tier review) at a live
step. From ticket DEGRADE_AT on, its tags go wrong while its replies stay right: the auto
tier's own detector alarms long before the whole candidate's would, its tags then go to
review, the tags pending publication are withdrawn, and the review tier holds.
"""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rollout.controller import Controller
from rollout.gates import detector
from rollout.runtime import LiveRollout
from rollout.state import Action, Refused, transition
from rollout.statistics import DetectorState
from rollout.tier_health import effective
from rollout.tiers import Policy
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.rollout import RolloutSpec
from shadow.config.tiers import Tier
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock

START = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
ROLLOUT, CANDIDATE, VERSION = "desk", "desk-agent", "7"
N = 600
DEGRADE_AT = 200
"""From this ticket on the agent's tags are wrong."""
PLAN: dict[str, Any] = {
    "name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 100}],
    "gates": {"agreement": 0.9},
    "rollback": {"healthy": 0.94, "degraded": 0.85, "false_alarm": 0.01, "horizon": 10_000},
    "evaluate_every_compared": 10, "independent_sources": ["desk"],
    "tiers": {"rules": [{"tool": "add_tag", "tier": "auto"},
                        {"tool": "send_reply", "tier": "review"}],
              "default": "human"},
    "sink": {"kind": "file", "path": "unused.jsonl"},
    "review_sink": {"kind": "file", "path": "unused-reviews.jsonl"},
}
COMPARATOR = ExactSpec(prediction_path="answer", outcome_path="answer")


def is_tag(i: int) -> bool:
    """A tenth of the tickets only need a tag; the rest a reply. Once every tag is wrong,
    nine agreements follow each disagreement: the whole candidate's detector, which rises
    by `up` (9 for this plan) on a disagreement and falls by one on an agreement, stays
    put, while the auto tier's sees nothing but disagreements."""
    return i % 10 == 0


def right(i: int) -> str:
    return f"tag-{i}" if is_tag(i) else f"reply-{i}"


def agent(event: Event) -> dict[str, Any]:
    i = int(event.event_id[1:])
    if is_tag(i):
        answer = right(i) if i < DEGRADE_AT else "tag-wrong"
        return {"answer": answer, "actions": [{"tool": "add_tag", "arguments": {"tag": answer}}]}
    return {"answer": right(i),
            "actions": [{"tool": "send_reply", "arguments": {"body": right(i)}}]}


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"T-{i}",
             "occurred_at": (START + timedelta(minutes=i)).isoformat(), "payload": {"i": i}}
            for i in range(N)]


def outcomes() -> list[dict[str, Any]]:
    return [{"key": f"T-{i}", "outcome": {"answer": right(i)},
             "decided_at": (START + timedelta(minutes=i, seconds=30)).isoformat()}
            for i in range(N)]


def run(store: Store, plan: dict[str, Any], sink: RecordingSink) -> LiveRollout:
    clock = SteppingClock(START, timedelta(seconds=1))
    spec = RolloutSpec.model_validate(plan)
    comparator = build_comparator(COMPARATOR)
    controller = Controller(store, spec, rollout=ROLLOUT, candidate=CANDIDATE, version=VERSION,
                            comparator=comparator.name, now=clock)
    controller.sync()
    controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
    live = LiveRollout(controller, sink, compare=lambda: compare(store, comparator, now=clock),
                       policy=Policy(spec.tiers), review_sink=RecordingSink())
    live.review_sink.open()
    with CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate:
        Pipeline(store, candidate, comparator, now=clock, rollout=live, batch_size=20).run(
            [ListSource(events())], [ListSource(outcomes(), name="desk")])
    live.after_batch(force=True)
    return live


def transitions(store: Store) -> list[tuple[str, str, Any]]:
    return store.db.execute(
        "SELECT action, actor, evidence FROM rollout_audit WHERE rollout = ? ORDER BY revision",
        [ROLLOUT]).fetchall()


@pytest.fixture(scope="module")
def degraded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RecordingSink]:
    path = tmp_path_factory.mktemp("fallback") / "s.duckdb"
    sink = RecordingSink()
    with Store(path) as store, sink:
        run(store, PLAN, sink)
    return path, sink


def test_the_auto_tier_falls_back_to_review_and_the_rollout_goes_on(
    degraded: tuple[Path, RecordingSink],
) -> None:
    with Store(degraded[0], read_only=True) as store:
        audit = transitions(store)
        state = store.db.execute("SELECT step, status, fallen_tiers FROM rollout_state").fetchall()

    assert [(action, actor) for action, actor, _ in audit] == [
        ("start", "controller"), ("promote", "dana"), ("tier_fallback", "controller")]
    assert state == [(1, "promoted", ["auto"])]


def test_the_fallback_comes_after_the_degradation_and_within_the_detectors_reach(
    degraded: tuple[Path, RecordingSink],
) -> None:
    with Store(degraded[0], read_only=True) as store:
        evidence = json.loads(transitions(store)[-1][2])
    cusum = detector(RolloutSpec.model_validate(PLAN))
    healthy_tags = sum(is_tag(i) for i in range(DEGRADE_AT))
    # Each wrong tag raises the statistic by `up` from at most its healthy level: the
    # alarm needs at least threshold / up of them, and comes after the first one.
    needed = -(-cusum.threshold // cusum.up)

    assert evidence["tier"] == "auto" and evidence["to"] == "review"
    assert evidence["alarmed_at"] is not None
    assert cusum.up == 9
    assert healthy_tags < evidence["alarmed_at"] <= healthy_tags + needed + 1
    assert evidence["agreed"] == healthy_tags


def test_no_tag_reaches_the_action_sink_once_the_tier_fell_back(
    degraded: tuple[Path, RecordingSink],
) -> None:
    with Store(degraded[0], read_only=True) as store:
        (fell_at,), = store.db.execute(
            "SELECT changed_at FROM rollout_audit WHERE action = 'tier_fallback'").fetchall()
        rows = store.db.execute(
            "SELECT event_id, tier, tier_rule, published_at, withdrawn_reason, predicted_at "
            "FROM predictions ORDER BY predicted_at").fetchall()
        proposals = {r[0] for r in store.db.execute("SELECT event_id FROM reviews").fetchall()}

    tags = [r for r in rows if is_tag(int(r[0][1:]))]
    after = [r for r in tags if r[5] > fell_at]
    assert after, "tags were predicted after the fallback"
    assert all((r[1], r[2]) == ("review", "fallback") for r in after if r[3] is None)
    published = {d.event_id for d in degraded[1].published}
    assert not published & {r[0] for r in after}
    assert {r[0] for r in after if r[1] == "review"} <= proposals
    # Replies were never auto: they stayed in review throughout.
    replies = [r for r in rows if not is_tag(int(r[0][1:]))]
    assert {(r[1], r[2]) for r in replies} == {("review", "rules[1]")}


def test_tags_assessed_auto_but_unpublished_at_the_fallback_are_withdrawn(
    degraded: tuple[Path, RecordingSink],
) -> None:
    with Store(degraded[0], read_only=True) as store:
        rows = store.db.execute(
            "SELECT tier, published_at IS NOT NULL, withdrawn_reason FROM predictions "
            "WHERE tier = 'auto'").fetchall()

    assert rows and all(published or reason == "tier_fallback: tier auto fell back"
                        for _, published, reason in rows)


def test_status_shows_each_tiers_detector(degraded: tuple[Path, RecordingSink]) -> None:
    from rollout.views import evidence_view

    with Store(degraded[0], read_only=True) as store:
        spec = RolloutSpec.model_validate(PLAN)
        controller = Controller(store, spec, rollout=ROLLOUT, candidate=CANDIDATE,
                                version=VERSION, comparator=build_comparator(COMPARATOR).name)
        controller.attach()
        view = evidence_view(controller, controller.assess())
        (moved,), = store.db.execute("SELECT count(*) FROM predictions WHERE tier = 'review' "
                                     "AND tier_rule = 'fallback'").fetchall()

    assert view is not None
    tiers = view["tiers"]
    assert tiers["fallen"] == ["auto"]
    by_tier = {d["tier"]: d for d in tiers["detectors"]}
    replies = sum(not is_tag(i) for i in range(N))
    # The tags that fell to review count there now: every one of them wrong.
    assert moved > 0
    assert (by_tier["review"]["units"], by_tier["review"]["agreed"]) == (replies + moved,
                                                                          replies)
    assert by_tier["review"]["alarmed_at"] is None


def test_healthy_tiers_do_not_fall_back(tmp_path: Path) -> None:
    global DEGRADE_AT
    saved, DEGRADE_AT = DEGRADE_AT, N
    try:
        with Store(tmp_path / "s.duckdb") as store, RecordingSink() as sink:
            run(store, PLAN, sink)
            actions = [action for action, _, _ in transitions(store)]
            published = len(sink.published)
    finally:
        DEGRADE_AT = saved
    assert actions == ["start", "promote"]
    assert published == sum(is_tag(i) for i in range(N))


@pytest.mark.parametrize(("tier", "fallen", "expected"), [
    (Tier.AUTO, [], Tier.AUTO), (Tier.AUTO, ["auto"], Tier.REVIEW),
    (Tier.AUTO, ["auto", "review"], Tier.HUMAN), (Tier.AUTO, ["review"], Tier.AUTO),
    (Tier.REVIEW, ["review"], Tier.HUMAN), (Tier.HUMAN, ["auto", "review"], Tier.HUMAN),
])
def test_a_fallen_tier_takes_the_next_more_careful_one(tier: Tier, fallen: list[str],
                                                      expected: Tier) -> None:
    assert effective(tier, fallen) is expected


def test_a_fallback_is_refused_where_it_makes_no_sense(tmp_path: Path) -> None:
    spec = RolloutSpec.model_validate(PLAN)
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, spec, rollout=ROLLOUT, candidate=CANDIDATE,
                                version=VERSION, comparator="exact")
        shadow = controller.sync()
        with pytest.raises(Refused, match="nothing is live"):
            transition(shadow, Action.TIER_FALLBACK, spec, actor="controller", reason="x",
                       at=START, tier="auto")
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        live = controller.state
        with pytest.raises(Refused, match="only tiers auto and review fall back"):
            transition(live, Action.TIER_FALLBACK, spec, actor="controller", reason="x",
                       at=START, tier="human")
        fell = transition(live, Action.TIER_FALLBACK, spec, actor="controller", reason="x",
                          at=START, tier="auto").after
        with pytest.raises(Refused, match="has fallen back already"):
            transition(fell, Action.TIER_FALLBACK, spec, actor="controller", reason="x",
                       at=START, tier="auto")
        restarted = transition(fell, Action.RESTART, spec, actor="dana", reason="fixed",
                               at=START).after
    assert fell.fallen == ("auto",) and restarted.fallen == ()


def test_two_healthy_tiers_fall_back_needlessly_at_most_twice_the_budget() -> None:
    """The README's claim: each tier's detector keeps the plan's false-alarm budget within
    ``horizon`` units, so with auto and review both watched a needless fallback of either
    is at most twice ``false_alarm``. Exact for one detector, simulated for the pair."""
    horizon, budget = 1_000, 0.05
    spec = RolloutSpec.model_validate({**PLAN, "rollback": {
        **PLAN["rollback"], "false_alarm": budget, "horizon": horizon}})
    cusum = detector(spec)
    healthy = cusum.healthy
    one = cusum.false_alarm_within(horizon)
    assert one <= budget
    assert 1 - (1 - one) ** 2 <= 2 * budget

    rng = random.Random(20261206)
    runs = 400
    fell = sum(
        any(cusum.advance(DetectorState(), [rng.random() < healthy for _ in range(horizon)])
            .alarmed_at is not None for _tier in range(2))
        for _ in range(runs))
    # The observed share may exceed the bound only by sampling noise (3 standard errors).
    noise = 3 * math.sqrt(2 * budget * (1 - 2 * budget) / runs)
    assert fell / runs <= 2 * budget + noise


def test_the_figures_of_docs_statistics_for_the_default_plan() -> None:
    """docs/statistics.md, "Tier fallback": one detector's budget, the pair's, and how many
    disagreements in a row make a tier fall back, for the default rollback levels."""
    cusum = detector(RolloutSpec.model_validate({"steps": [{"percent": 0}]}))
    one = cusum.false_alarm_within(100_000)
    assert (cusum.up, cusum.threshold) == (8, 77)
    assert round(100 * one, 3) == 0.846
    assert round(100 * (1 - (1 - one) ** 2), 3) == 1.685
    assert cusum.advance(DetectorState(), [False] * 10).alarmed_at == 10
    assert cusum.advance(DetectorState(), [False] * 9).alarmed_at is None
