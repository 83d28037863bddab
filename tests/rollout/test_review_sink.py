"""Routing by tier: at a live step, tier auto reaches the action sink, tier review the
review sink as a proposal with its evidence, tier human nothing; a shadow step records
what each tier would have done. Proposals keep the outbox's guarantees."""

from __future__ import annotations

import hashlib
import json
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka import KafkaSink
from connectors.sinks import Sink
from rollout.controller import Controller
from rollout.runtime import LiveRollout, open_rollout
from rollout.state import Action
from rollout.tiers import Policy
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.file import Config, load_config
from shadow.config.rollout import RolloutSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock
from tests.http_server import Reply, TestServer
from tests.rollout.test_action_requests import CrashAfterPublish
from tests.rollout.test_live_kafka import consume_all

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ROLLOUT, CANDIDATE, VERSION = "desk", "desk-agent", "4"
POLICY = {
    "rules": [
        {"tool": "add_tag", "tier": "auto"},
        {"tool": "send_reply", "confidence": {"at_least": 0.8}, "tier": "review"},
        {"tool": "send_reply", "tier": "human"},
        {"tool": "issue_refund", "tier": "human"},
    ],
    "default": "human",
    "evidence": ["subject", "requester.email", "requester.plan", "order.id"],
    "redact": ["requester.email"],
}
# What each event asks for, and so what the agent proposes.
KINDS = ["tag", "reply", "refund", "unsure", "boom", "reply", "tag", "tag_and_reply"]
TIERS = {"tag": ("auto", "rules[0]"), "reply": ("review", "rules[1]"),
         "refund": ("human", "rules[3]"), "unsure": ("human", "rules[2]"),
         "boom": ("human", "error"), "tag_and_reply": ("review", "rules[1]")}
AUTO = [i for i, kind in enumerate(KINDS) if TIERS[kind][0] == "auto"]
REVIEW = [i for i, kind in enumerate(KINDS) if TIERS[kind][0] == "review"]


def tag(i: int) -> dict[str, Any]:
    return {"tool": "add_tag", "arguments": {"tag": f"t{i}"}}


def reply(i: int, confidence: float) -> dict[str, Any]:
    return {"tool": "send_reply", "arguments": {"body": f"Dear customer {i}"},
            "confidence": confidence}


def output_of(i: int) -> dict[str, Any]:
    """What the agent answers for event ``e{i}``."""
    kind = KINDS[i]
    actions = {"tag": [tag(i)], "reply": [reply(i, 0.9)], "unsure": [reply(i, 0.5)],
               "refund": [{"tool": "issue_refund", "arguments": {"amount": 10 * i}}],
               "tag_and_reply": [tag(i), reply(i, 0.85)]}[kind]
    return {"actions": actions, "note": f"case {i}"}


def agent(event: Event) -> Any:
    i = int(event.event_id[1:])
    if KINDS[i] == "boom":
        raise RuntimeError("the model timed out")
    return output_of(i)


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"T-{i}", "occurred_at": START.isoformat(),
             "payload": {"subject": f"Subject {i}", "kind": kind,
                         "requester": {"email": f"p{i}@example.com", "plan": "pro"}}}
            for i, kind in enumerate(KINDS)]


def review_id_of(event_id: str) -> str:
    named = json.dumps([ROLLOUT, event_id, CANDIDATE, VERSION], separators=(",", ":"))
    return "rev_" + hashlib.sha256(named.encode()).hexdigest()[:32]


def expected_proposal(i: int, *, live: bool) -> dict[str, Any]:
    """The proposal of event ``e{i}``, built from the events and the policy by hand."""
    actions = output_of(i)["actions"]
    return {
        "review_id": review_id_of(f"e{i}"), "event_id": f"e{i}", "key": f"T-{i}",
        "candidate": CANDIDATE, "version": VERSION, "rollout": ROLLOUT,
        "step": 1 if live else 0, "percent": 100.0 if live else 0.0,
        "mode": "live" if live else "shadow", "tier": "review", "rule": "rules[1]",
        "output": output_of(i), "confidence": None, "actions": actions,
        "evidence": {"subject": f"Subject {i}", "requester.email": "[redacted]",
                     "requester.plan": "pro"},
    }


def without_time(body: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(body)
    assert datetime.fromisoformat(message.pop("predicted_at")).tzinfo is not None
    return message


def live_rollout(store: Store, sink: Sink, reviews: Sink, clock: SteppingClock, *,
                 promote: bool) -> LiveRollout:
    spec = RolloutSpec.model_validate({
        "name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 100}], "tiers": POLICY,
        "sink": {"kind": "file", "path": "unused.jsonl"},
        "review_sink": {"kind": "file", "path": "unused-reviews.jsonl"}})
    comparator = build_comparator(ExactSpec())
    controller = Controller(store, spec, rollout=ROLLOUT, candidate=CANDIDATE, version=VERSION,
                            comparator=comparator.name, now=clock)
    controller.sync()
    if promote:
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
    return LiveRollout(controller, sink, compare=lambda: compare(store, comparator, now=clock),
                       policy=Policy(spec.tiers), review_sink=reviews)


def replay(store: Store, live: LiveRollout, clock: SteppingClock) -> None:
    with CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate:
        Pipeline(store, candidate, build_comparator(ExactSpec()), now=clock,
                 rollout=live).run([ListSource(events())])


def stored_tiers(store: Store) -> list[tuple[str, str, str]]:
    return store.db.execute(
        "SELECT event_id, tier, tier_rule FROM predictions ORDER BY event_id").fetchall()


def expected_tiers() -> list[tuple[str, str, str]]:
    return sorted((f"e{i}", *TIERS[kind]) for i, kind in enumerate(KINDS))


def stored_reviews(store: Store) -> list[tuple[Any, ...]]:
    rows = store.db.execute(
        "SELECT review_id, event_id, key, candidate, version, rollout, mode, rollout_step, "
        "status, proposal, published_at IS NOT NULL FROM reviews ORDER BY event_id").fetchall()
    return [(*row[:9], without_time(row[9].encode()), row[10]) for row in rows]


def test_each_tier_at_a_live_step(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions, proposals = RecordingSink(), RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions, proposals:
        live = live_rollout(store, actions, proposals, clock, promote=True)
        replay(store, live, clock)
        assert stored_tiers(store) == expected_tiers()
        assert stored_reviews(store) == [
            (review_id_of(f"e{i}"), f"e{i}", f"T-{i}", CANDIDATE, VERSION, ROLLOUT, "live", 1,
             "open", expected_proposal(i, live=True), True) for i in REVIEW]
        unpublished = store.db.execute(
            "SELECT event_id FROM predictions WHERE published_at IS NULL "
            "ORDER BY event_id").fetchall()

    assert [d.event_id for d in actions.published] == [f"e{i}" for i in AUTO]
    assert [without_time(d.body()) for d in proposals.published] == [
        expected_proposal(i, live=True) for i in REVIEW]
    assert [dict(d.headers())["review_id"] for d in proposals.published] == [
        review_id_of(f"e{i}").encode() for i in REVIEW]
    assert all(b"@example.com" not in d.body() for d in proposals.published)
    # Only the action sink marks predictions published; review and human stay unmarked.
    assert unpublished == [(f"e{i}",) for i, kind in enumerate(KINDS) if i not in AUTO]


def test_a_shadow_step_records_what_each_tier_would_have_done(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions, proposals = RecordingSink(), RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions, proposals:
        live = live_rollout(store, actions, proposals, clock, promote=False)
        replay(store, live, clock)
        assert stored_tiers(store) == expected_tiers()
        assert stored_reviews(store) == [
            (review_id_of(f"e{i}"), f"e{i}", f"T-{i}", CANDIDATE, VERSION, ROLLOUT, "shadow",
             0, "open", expected_proposal(i, live=False), False) for i in REVIEW]
    assert actions.published == [] and proposals.published == []


def test_a_proposal_published_before_a_crash_goes_out_again_the_same(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    first, second, actions = RecordingSink(), RecordingSink(), RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions:
        live = live_rollout(store, actions, CrashAfterPublish(first), clock, promote=True)
        live.review_sink.open()
        with pytest.raises(RuntimeError, match="killed between"):
            replay(store, live, clock)
    with Store(tmp_path / "s.duckdb") as store, second, RecordingSink() as again:
        restarted = live_rollout(store, again, second, clock, promote=False)
        assert restarted.controller.state.step == 1
        restarted.publish_pending()
        assert restarted.proposed == len(REVIEW)
        restarted.publish_pending()  # marked now: nothing goes out a third time
        assert [row[-1] for row in stored_reviews(store)] == [True] * len(REVIEW)
    assert [d.body() for d in first.published] == [d.body() for d in second.published]
    assert [json.loads(d.body())["review_id"] for d in second.published] == [
        review_id_of(f"e{i}") for i in REVIEW]


def test_a_refusing_review_sink_keeps_proposals_until_it_takes_them(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions, proposals = RecordingSink(), RecordingSink()
    proposals.fail_next(1)
    with Store(tmp_path / "s.duckdb") as store, actions, proposals:
        live = live_rollout(store, actions, proposals, clock, promote=True)
        with CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate:
            Pipeline(store, candidate, build_comparator(ExactSpec()), now=clock, rollout=live,
                     batch_size=len(KINDS)).run([ListSource(events())])
        # The run's last publish came after the failure: everything is out, once.
        assert proposals.failures == 1
        assert [json.loads(d.body())["event_id"] for d in proposals.published] == [
            f"e{i}" for i in REVIEW]
        assert [d.event_id for d in actions.published] == [f"e{i}" for i in AUTO]


def test_a_rollback_withdraws_the_proposals_not_yet_published(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    actions, proposals = RecordingSink(), RecordingSink()
    with Store(tmp_path / "s.duckdb") as store, actions, proposals:
        live = live_rollout(store, actions, proposals, clock, promote=True)
        proposals.fail_next(100)
        replay(store, live, clock)
        live.controller.command(Action.ROLLBACK, actor="dana", reason="test")
        proposals.fail_next(0)
        live.publish_pending()
        statuses = store.db.execute(
            "SELECT status, count(*) FROM reviews GROUP BY status").fetchall()
    assert proposals.published == []
    assert statuses == [("withdrawn", len(REVIEW))]


def test_each_tier_on_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    decisions, reviews = f"actions-{suffix}", f"reviews-{suffix}"
    clock = SteppingClock(START, timedelta(seconds=30))
    with Store(tmp_path / "s.duckdb") as store, \
            KafkaSink(bootstrap=kafka_bootstrap, topic=decisions) as actions, \
            KafkaSink(bootstrap=kafka_bootstrap, topic=reviews) as proposals:
        replay(store, live_rollout(store, actions, proposals, clock, promote=True), clock)
        assert stored_tiers(store) == expected_tiers()

    acted = consume_all(kafka_bootstrap, decisions, len(AUTO))
    proposed = consume_all(kafka_bootstrap, reviews, len(REVIEW))
    assert sorted(json.loads(m.value)["event_id"] for m in acted) == [f"e{i}" for i in AUTO]
    assert sorted((without_time(m.value) for m in proposed), key=lambda p: p["event_id"]) == [
        expected_proposal(i, live=True) for i in REVIEW]
    for m in proposed:
        message = json.loads(m.value)
        assert m.key.decode() == message["key"]
        assert dict(m.headers)["review_id"].decode() == review_id_of(message["event_id"])
    human = {f"e{i}" for i, kind in enumerate(KINDS) if TIERS[kind][0] == "human"}
    published = {json.loads(m.value)["event_id"] for m in [*acted, *proposed]}
    assert not human & published


def configured(tmp_path: Path, review_sink: str) -> Config:
    """The desk's configuration as a file, its review sink as given."""
    config = tmp_path / "desk.yaml"
    config.write_text(json.dumps({
        "candidate": {"callable": "tests.rollout.test_review_sink:agent", "name": CANDIDATE,
                      "version": VERSION},
        "rollout": {"name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 100}],
                    "tiers": POLICY, "sink": {"kind": "file", "path": "out/actions.jsonl"},
                    "review_sink": json.loads(review_sink)}}), encoding="utf-8")
    return load_config(config)


def replay_configured(tmp_path: Path, config: Config) -> None:
    """Open the configured rollout as a replay does, promote it, replay the events."""
    clock = SteppingClock(START, timedelta(seconds=30))
    comparator = build_comparator(ExactSpec())
    with Store(tmp_path / "s.duckdb") as store, ExitStack() as opened, \
            CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate:
        assert config.rollout is not None
        live = open_rollout(config.rollout, store, [candidate], comparator, opened, now=clock)
        live.controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        Pipeline(store, candidate, comparator, now=clock, rollout=live).run(
            [ListSource(events())])


def test_a_configured_file_review_sink_beside_the_config(tmp_path: Path) -> None:
    replay_configured(tmp_path, configured(
        tmp_path, '{"kind": "file", "path": "out/reviews.jsonl"}'))
    lines = (tmp_path / "out" / "reviews.jsonl").read_bytes().splitlines()
    assert [without_time(line) for line in lines] == [
        expected_proposal(i, live=True) for i in REVIEW]
    acted = (tmp_path / "out" / "actions.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["event_id"] for line in acted] == [f"e{i}" for i in AUTO]


def test_a_configured_webhook_review_sink_gets_one_request_per_proposal(
        tmp_path: Path) -> None:
    with TestServer(lambda request: Reply(status=204)) as server:
        replay_configured(tmp_path, configured(
            tmp_path, json.dumps({"kind": "webhook", "url": server.url + "/reviews"})))
        received = list(server.requests)
    assert [r.path for r in received] == ["/reviews"] * len(REVIEW)
    assert [without_time(r.body) for r in received] == [
        expected_proposal(i, live=True) for i in REVIEW]
    assert [r.headers["webhook-id"] for r in received] == [
        "msg_" + review_id_of(f"e{i}") for i in REVIEW]
