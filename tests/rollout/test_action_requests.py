"""Live decisions that propose actions are published as action requests: the valid
actions in order, where they come from and an idempotency key that a republish repeats;
never the tool results of shadow runs. Decisions without actions keep their message."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.kafka import KafkaSink
from connectors.sinks import Decision, Sink
from rollout.controller import Controller
from rollout.runtime import LiveRollout
from rollout.state import Action
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.compare.step import compare
from shadow.config.comparators import ExactSpec
from shadow.config.rollout import RolloutSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store
from shadow.testing import ListSource, RecordingSink
from tests.clock import SteppingClock
from tests.rollout.test_live_kafka import consume_all

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ROLLOUT, CANDIDATE, VERSION = "refunds", "agent", "7"
LOOKUP = {"step": 1, "order": 0, "tool": "get_customer", "arguments": {"id": "c1"},
          "output": {"email": "ana@example.com"}, "error": None, "latency_ms": 3.0}
REPLY = {"tool": "send_reply", "arguments": {"body": "Sorry"}, "id": "call_2",
         "confidence": 0.9}
# What each kind of event makes the agent answer.
KINDS = ["act", "plain", "malformed", "quiet", "act", "plain"]


def agent(event: Event) -> Any:
    kind, amount = event.payload["kind"], event.payload["amount"]
    refund = {"tool": "issue_refund", "arguments": {"amount": amount}}
    if kind == "act":
        return {"reply": "Refund on its way", "actions": [refund, REPLY],
                "tool_calls": [LOOKUP], "stop": "proposed"}
    if kind == "malformed":
        return {"actions": [refund, {"tool": "", "arguments": {}}], "tool_calls": [LOOKUP]}
    if kind == "quiet":  # an agent that answered without acting
        return {"reply": "Nothing to do", "actions": [], "tool_calls": [LOOKUP]}
    return {"label": "billing", "amount": amount}


def events() -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "key": f"k{i}", "occurred_at": START.isoformat(),
             "payload": {"kind": kind, "amount": 10 * (i + 1)}}
            for i, kind in enumerate(KINDS)]


def key_of(event_id: str) -> str:
    named = json.dumps([ROLLOUT, event_id, CANDIDATE, VERSION], separators=(",", ":"))
    return "act_" + hashlib.sha256(named.encode()).hexdigest()[:32]


def expected_message(i: int) -> dict[str, Any]:
    """What the consumer reads for event ``e{i}``, built from the events, not the code."""
    amount = 10 * (i + 1)
    kind = KINDS[i]
    message: dict[str, Any] = {"event_id": f"e{i}", "key": f"k{i}", "candidate": CANDIDATE,
                               "version": VERSION}
    if kind == "act":
        message["output"] = {"reply": "Refund on its way", "actions": [
            {"tool": "issue_refund", "arguments": {"amount": amount}}, REPLY],
            "stop": "proposed"}
    elif kind == "quiet":
        message["output"] = {"reply": "Nothing to do", "actions": []}
    else:
        message["output"] = {"label": "billing", "amount": amount}
    message.update({"rollout": ROLLOUT, "step": 1, "percent": 100.0, "review": False})
    if kind == "act":
        message["actions"] = [{"tool": "issue_refund", "arguments": {"amount": amount}},
                              {"tool": "send_reply", "arguments": {"body": "Sorry"}}]
        message["idempotency_key"] = key_of(f"e{i}")
    return message


PUBLISHED = [i for i, kind in enumerate(KINDS) if kind != "malformed"]


class CrashAfterPublish(Sink):
    """Hands a batch to the real sink, then dies before the outbox marks it published."""

    name = "crashing"

    def __init__(self, inner: Sink) -> None:
        self.inner = inner

    def _open(self) -> None:
        self.inner.open()

    def _publish(self, decisions: Sequence[Decision]) -> None:
        self.inner.publish(decisions)
        raise RuntimeError("killed between publishing and marking published")

    def _close(self) -> None:
        self.inner.close()


def live_rollout(store: Store, sink: Sink, clock: SteppingClock, *, promote: bool) -> LiveRollout:
    spec = RolloutSpec.model_validate({
        "name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 100}],
        "sink": {"kind": "file", "path": "unused.jsonl"}})
    comparator = build_comparator(ExactSpec())
    controller = Controller(store, spec, rollout=ROLLOUT, candidate=CANDIDATE, version=VERSION,
                            comparator=comparator.name, now=clock)
    controller.sync()
    if promote:
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
    return LiveRollout(controller, sink, compare=lambda: compare(store, comparator, now=clock))


def replay_then_crash(store: Store, sink: Sink, clock: SteppingClock) -> None:
    live = live_rollout(store, CrashAfterPublish(sink), clock, promote=True)
    live.sink.open()
    with CallableCandidate(agent, name=CANDIDATE, version=VERSION) as candidate, \
            pytest.raises(RuntimeError, match="killed between"):
        Pipeline(store, candidate, build_comparator(ExactSpec()), now=clock,
                 rollout=live).run([ListSource(events())])


def restart_and_publish(store: Store, sink: Sink, clock: SteppingClock) -> int:
    live = live_rollout(store, sink, clock, promote=False)
    assert live.controller.state.step == 1  # the restart resumes the live step
    return live.publish_pending()


def without_time(body: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(body)
    assert datetime.fromisoformat(message.pop("predicted_at")).tzinfo is not None
    return message


def test_action_requests_at_a_live_step_and_their_republish(tmp_path: Path) -> None:
    clock = SteppingClock(START, timedelta(seconds=30))
    first, second = RecordingSink(), RecordingSink()
    with Store(tmp_path / "s.duckdb") as store:
        replay_then_crash(store, first, clock)
    with Store(tmp_path / "s.duckdb") as store, second:
        assert restart_and_publish(store, second, clock) == len(PUBLISHED)
        unpublished = store.db.execute(
            "SELECT event_id, violations FROM predictions WHERE published_at IS NULL").fetchall()
    assert unpublished == [("e2", ["actions:malformed actions[1]: tool: expected a non-empty "
                                   "string, got str"])]

    for sink in (first, second):
        assert [d.event_id for d in sink.published] == [f"e{i}" for i in PUBLISHED]
        assert [without_time(d.body()) for d in sink.published] == [
            expected_message(i) for i in PUBLISHED]
    assert [d.body() for d in first.published] == [d.body() for d in second.published]
    for decision in first.published:
        assert b"get_customer" not in decision.body()  # no tool result leaves
        if decision.output.get("label") == "billing":  # no actions: the message of before
            at = decision.predicted_at.astimezone(UTC).isoformat()
            assert decision.body() == orjson.dumps({
                "event_id": decision.event_id, "key": decision.key, "candidate": CANDIDATE,
                "version": VERSION, "output": decision.output, "rollout": ROLLOUT, "step": 1,
                "percent": 100.0, "review": False, "predicted_at": at})
    keys = {json.loads(d.body()).get("idempotency_key") for d in first.published}
    assert keys == {None, key_of("e0"), key_of("e4")}


def test_action_requests_on_kafka_and_the_same_key_after_a_restart(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = f"actions-{uuid.uuid4().hex[:8]}"
    clock = SteppingClock(START, timedelta(seconds=30))
    with Store(tmp_path / "s.duckdb") as store:
        replay_then_crash(store, KafkaSink(bootstrap=kafka_bootstrap, topic=topic), clock)
    with Store(tmp_path / "s.duckdb") as store, \
            KafkaSink(bootstrap=kafka_bootstrap, topic=topic) as sink:
        assert restart_and_publish(store, sink, clock) == len(PUBLISHED)

    messages = consume_all(kafka_bootstrap, topic, 2 * len(PUBLISHED))
    assert len(messages) == 2 * len(PUBLISHED)  # each decision twice: before and after
    by_event: dict[str, list[Any]] = {}
    for m in messages:
        by_event.setdefault(json.loads(m.value)["event_id"], []).append(m)
    assert sorted(by_event) == sorted(f"e{i}" for i in PUBLISHED)
    for i in PUBLISHED:
        copies = by_event[f"e{i}"]
        assert [without_time(m.value) for m in copies] == [expected_message(i)] * 2
        assert copies[0].value == copies[1].value
        assert {m.key.decode() for m in copies} == {f"k{i}"}
        headers = [dict(m.headers) for m in copies]
        assert all(h["event_id"] == f"e{i}".encode() for h in headers)
        if KINDS[i] == "act":
            assert [h["idempotency_key"].decode() for h in headers] == [key_of(f"e{i}")] * 2
        else:
            assert all("idempotency_key" not in h for h in headers)
        assert all(b"ana@example.com" not in m.value for m in copies)
