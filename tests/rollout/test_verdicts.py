"""Review verdicts through the pipeline: read from a source, stored or dead-lettered, and
approved or edited proposals published to the action sink once; rejected ones never.
Verdicts are outcomes of source ``review``, independent for the gates only when the
reviewers were blind to the confidence."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.files import FileSource
from connectors.sinks import Sink
from rollout.controller import Controller
from rollout.runtime import LiveRollout
from rollout.state import Action
from rollout.tiers import Policy
from rollout.units import Independence
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.rollout import RolloutSpec
from shadow.pipeline.runner import Pipeline, ReplaySummary
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock
from tests.rollout.test_review_sink import (
    AUTO,
    CANDIDATE,
    POLICY,
    REVIEW,
    ROLLOUT,
    START,
    VERSION,
    agent,
    events,
    output_of,
    review_id_of,
)

DECIDED = START + timedelta(hours=1)
APPROVED, EDITED, REJECTED = REVIEW  # e1 (reply), e5 (reply), e7 (tag and reply)
EDIT = {"actions": [{"tool": "send_reply", "arguments": {"body": "Dear Ms Doe"}}],
        "note": "edited"}


def act_key(i: int) -> str:
    """The idempotency key of the reviewed action of event ``e{i}``, computed from the
    review id by hand: ``act_`` and the review id's digest."""
    return "act_" + review_id_of(f"e{i}")[len("rev_"):]


def verdict(i: int, word: str, output: Any = None, **extra: Any) -> dict[str, Any]:
    record = {"review_id": review_id_of(f"e{i}"), "verdict": word, "reviewer": "sam",
              "decided_at": DECIDED.isoformat(), **extra}
    if output is not None:
        record["output"] = output
    return record


GOOD = [verdict(APPROVED, "approved"), verdict(EDITED, "edit", EDIT),
        verdict(REJECTED, "reject")]


def live_rollout(store: Store, actions: Sink, clock: SteppingClock, *, promote: bool,
                 blind: bool = False, independent: list[str] | None = None) -> LiveRollout:
    spec = RolloutSpec.model_validate({
        "name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 100}],
        "tiers": {**POLICY, "reviewers_blind": blind}, "label_window": "1m",
        "independent_sources": independent or [], "max_decision_age": None,
        "sink": {"kind": "file", "path": "unused.jsonl"},
        "review_sink": {"kind": "file", "path": "unused-reviews.jsonl"}})
    comparator = build_comparator(ExactSpec())
    controller = Controller(store, spec, rollout=ROLLOUT, candidate=CANDIDATE, version=VERSION,
                            comparator=comparator.name, now=clock)
    controller.sync()
    if promote:
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
    reviews = RecordingSink()
    reviews.open()
    return LiveRollout(controller, actions, compare=lambda: compare(store, comparator, now=clock),
                       policy=Policy(spec.tiers), review_sink=reviews)


def run(store: Store, live: LiveRollout, clock: SteppingClock, *,
        verdicts: list[dict[str, Any]] | None = None, replay: bool = True) -> ReplaySummary:
    with CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate:
        pipeline = Pipeline(store, candidate, build_comparator(ExactSpec()), now=clock,
                            rollout=live)
        sources = [ListSource(events())] if replay else []
        return pipeline.run(sources, verdicts=[ListSource(verdicts or [], name="verdicts")])


def bodies(sink: RecordingSink) -> list[dict[str, Any]]:
    return [json.loads(d.body()) for d in sink.published]


def test_approved_and_edited_proposals_reach_the_action_sink_rejected_ones_never(
        tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions = RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions:
        live = live_rollout(store, actions, clock, promote=True)
        run(store, live, clock)
        assert [d.event_id for d in actions.published] == [f"e{i}" for i in AUTO]
        summary = run(store, live, clock, verdicts=GOOD, replay=False)
        statuses = dict(store.db.execute("SELECT event_id, status FROM reviews").fetchall())
    assert (summary.verdicts_read, summary.verdicts_taken) == (3, 3)
    reviewed = bodies(actions)[len(AUTO):]
    assert [(m["event_id"], m["verdict"], m["idempotency_key"], m["review_id"]) for m in
            reviewed] == [(f"e{APPROVED}", "approve", act_key(APPROVED),
                           review_id_of(f"e{APPROVED}")),
                          (f"e{EDITED}", "edit", act_key(EDITED), review_id_of(f"e{EDITED}"))]
    approved, edited = reviewed
    assert approved["output"] == output_of(APPROVED)
    assert approved["actions"] == [{"tool": a["tool"], "arguments": a["arguments"]}
                                   for a in output_of(APPROVED)["actions"]]
    assert edited["output"] == EDIT and edited["actions"] == EDIT["actions"]
    assert (edited["reviewer"], edited["review"], edited["step"]) == ("sam", True, 1)
    assert datetime.fromisoformat(edited["decided_at"]) == DECIDED
    assert dict(actions.published[-1].headers())["idempotency_key"] == act_key(EDITED).encode()
    assert statuses == {f"e{APPROVED}": "approved", f"e{EDITED}": "edited",
                        f"e{REJECTED}": "rejected"}


def test_bad_verdict_records_are_dead_letters_with_reason_and_position(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions = RecordingSink()
    records = [
        *GOOD,
        verdict(APPROVED, "approve"),                 # item 3: the same again, taken
        verdict(EDITED, "reject"),                    # item 4: a second, different verdict
        {**verdict(APPROVED, "approve"), "review_id": "rev_unknown"},  # item 5
        verdict(REJECTED, "edit"),                    # item 6: an edit without its output
        verdict(REJECTED, "maybe"),                   # item 7
        {"review_id": review_id_of("e1"), "verdict": "approve"},        # item 8: no time
    ]
    with Store(tmp_path / "s.duckdb") as store, actions:
        live = live_rollout(store, actions, clock, promote=True)
        run(store, live, clock)
        summary = run(store, live, clock, verdicts=records, replay=False)
        dead = store.db.execute("SELECT kind, source, position, reason FROM dead_letters "
                                "ORDER BY position").fetchall()
        stored = store.count("review_verdicts")
    assert (summary.verdicts_read, summary.verdicts_taken,
            summary.verdict_dead_letters) == (9, 4, 5)
    assert stored == 3
    assert [row[:3] for row in dead] == [("verdict", "verdicts", f"item {n}")
                                         for n in (4, 5, 6, 7, 8)]
    reasons = [row[3] for row in dead]
    assert reasons[0] == f"review '{review_id_of(f'e{EDITED}')}' already has a verdict (edit)"
    assert reasons[1].startswith("no review 'rev_unknown'")
    assert reasons[2] == f"review '{review_id_of(f'e{REJECTED}')}': an edit needs the edited output"
    assert "field 'verdict'" in reasons[3] and "'maybe'" in reasons[3]
    assert reasons[4] == "missing field 'decided_at'"
    assert len(actions.published) == len(AUTO) + 2  # each approved or edited one, once


def test_a_refusing_action_sink_publishes_the_reviewed_actions_once_it_takes_them(
        tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions = RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions:
        live = live_rollout(store, actions, clock, promote=True)
        run(store, live, clock)
        actions.fail_next(100)
        run(store, live, clock, verdicts=GOOD, replay=False)
        waiting = store.db.execute("SELECT count(*) FROM review_verdicts "
                                   "WHERE published_at IS NULL").fetchall()
        actions.fail_next(0)
        live.publish_pending()
        live.publish_pending()
    assert waiting == [(3,)]  # the reject too: it is never published, so never marked
    assert [m.get("idempotency_key") for m in bodies(actions)[len(AUTO):]] == [
        act_key(APPROVED), act_key(EDITED)]
    assert live.reviewed == 2


def test_approves_and_edits_are_outcomes_of_source_review(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    with Store(tmp_path / "s.duckdb") as store, RecordingSink() as actions:
        live = live_rollout(store, actions, clock, promote=True)
        run(store, live, clock)
        run(store, live, clock, verdicts=GOOD, replay=False)
        rows = store.db.execute("SELECT key, outcome, actor, source, position FROM outcomes "
                                "ORDER BY key").fetchall()
        compared = dict(store.db.execute(
            "SELECT event_id, agree FROM comparisons").fetchall())
    assert [(k, json.loads(o), a, s, p) for k, o, a, s, p in rows] == [
        (f"T-{APPROVED}", output_of(APPROVED), "sam", "review", review_id_of(f"e{APPROVED}")),
        (f"T-{EDITED}", EDIT, "sam", "review", review_id_of(f"e{EDITED}"))]
    assert compared == {f"e{APPROVED}": True, f"e{EDITED}": False}


@pytest.mark.parametrize(("blind", "independent"), [(False, 0), (True, 2)])
def test_verdicts_judge_live_units_only_when_reviewers_are_blind(
        tmp_path: Path, blind: bool, independent: int) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    with Store(tmp_path / "s.duckdb") as store, RecordingSink() as actions:
        # "*" would match any source: a review is still anchored unless reviewers are blind.
        live = live_rollout(store, actions, clock, promote=True, blind=blind,
                            independent=["*"])
        run(store, live, clock)
        run(store, live, clock, verdicts=GOOD, replay=False)
        live.controller.sync()
        counts, _ = live.controller.units.counts()
    # Two live units have a verdict's outcome (the approve and the edit); the reject has none.
    assert counts.labelled == independent
    assert counts.dependent == 2 - independent


def test_the_review_source_is_independent_only_when_blind() -> None:
    def plan(blind: bool, sources: list[str]) -> RolloutSpec:
        return RolloutSpec.model_validate({
            "steps": [{"percent": 0}], "independent_sources": sources,
            "tiers": {"reviewers_blind": blind}})

    anchored = Independence.of(plan(False, ["*"]))
    assert anchored("kafka:crm") and not anchored("review")
    assert not Independence.of(plan(False, ["review"]))("review")
    blind = Independence.of(plan(True, []))
    assert blind and blind("review") and not blind("kafka:crm")
    assert not Independence.of(plan(False, []))


def test_verdicts_read_from_a_file_are_stored_once_however_often_it_is_read(
        tmp_path: Path) -> None:
    path = tmp_path / "verdicts.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in GOOD), encoding="utf-8")
    clock = SteppingClock(START, timedelta(seconds=30))
    actions = RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions:
        live = live_rollout(store, actions, clock, promote=True)
        run(store, live, clock)
        with CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate:
            for _ in range(2):  # a file is read whole at every start
                Pipeline(store, candidate, build_comparator(ExactSpec()), now=clock,
                         rollout=live).run([], verdicts=[FileSource(path)])
        stored = store.db.execute("SELECT review_id, source, position FROM review_verdicts "
                                  "ORDER BY position").fetchall()
        dead = store.count("dead_letters")
    assert [(r, p) for r, _, p in stored] == [
        (review_id_of(f"e{i}"), f"line {n}") for n, i in enumerate(REVIEW, start=1)]
    assert dead == 0
    assert [m["idempotency_key"] for m in bodies(actions)[len(AUTO):]] == [
        act_key(APPROVED), act_key(EDITED)]
