"""Review verdicts through the daemon and a real Kafka broker: proposals on the review
topic, verdicts consumed back from a verdict topic (and given through the control API),
approved and edited actions on the action topic once each, also across a SIGKILL
between storing the verdicts and publishing them; rejected ones never."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from shadow.config.file import parse_config
from shadow.service.daemon import startup_problems
from shadow.store.database import Store
from tests.daemon_process import TOKEN, get, ready_api, start_daemon, stop
from tests.http_server import Reply, Request, TestServer
from tests.rollout.test_live_kafka import consume_all
from tests.rollout.test_review_sink import AUTO, KINDS, POLICY, REVIEW, events, review_id_of
from tests.waiting import wait_until

APPROVED, EDITED, REJECTED = REVIEW  # e1, e5, e7
EDIT = {"actions": [{"tool": "send_reply", "arguments": {"body": "Dear Ms Doe, sorry."}}]}
DECIDED = "2026-03-02T10:00:00+00:00"


def act_key(i: int) -> str:
    """``act_`` and the digest in the review id, computed here from the review id."""
    return "act_" + review_id_of(f"e{i}")[len("rev_"):]


def verdict_record(i: int, decision: str, edited: Any = None) -> dict[str, Any]:
    """A verdict as the review tool sends it (mapped by ``mapping.verdicts``)."""
    record: dict[str, Any] = {"review": {"id": review_id_of(f"e{i}")}, "decision": decision,
                              "by": "sam", "at": DECIDED}
    if edited is not None:
        record["edited"] = edited
    return record


class Desk:
    """A support desk's configuration: the tier policy of the review sink tests, the
    action sink on Kafka, or (``refusing``) a webhook that answers 503."""

    def __init__(self, directory: Path, bootstrap: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.directory, self.bootstrap = directory, bootstrap
        self.events, self.verdicts = f"desk-events-{suffix}", f"desk-verdicts-{suffix}"
        self.reviews, self.actions = f"desk-reviews-{suffix}", f"desk-actions-{suffix}"
        self.suffix = suffix
        self.db = directory / "desk.duckdb"
        self.config = directory / "desk.yaml"
        self.runs = 0

    def write(self, sink: str) -> None:
        group = "{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}"
        self.config.write_text(f"""
candidate: {{callable: "tests.rollout.test_review_sink:agent", name: desk-agent, version: "4"}}
store: {{path: desk.duckdb}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{self.bootstrap}", topics: [{self.events}],
       group: desk-{self.suffix}, options: {group}}}
  verdicts:
    - {{kind: kafka, bootstrap: "{self.bootstrap}", topics: [{self.verdicts}],
       group: desk-{self.suffix}-verdicts, options: {group}}}
mapping:
  verdicts: {{review_id: review.id, verdict: decision, output: edited, reviewer: by,
             decided_at: at}}
rollout:
  name: desk
  steps: [{{percent: 0}}, {{percent: 100}}]
  max_decision_age: null
  tiers: {json.dumps(POLICY)}
  sink: {sink}
  review_sink: {{kind: kafka, bootstrap: "{self.bootstrap}", topic: {self.reviews}}}
daemon:
  api: {{port: 0}}
  jobs: {{evaluate_every: 1s, compare_every: 1s, reports_dir: reports}}
  shutdown_deadline: 10s
""", encoding="utf-8")

    def start(self) -> tuple[Any, str]:
        self.runs += 1
        process = start_daemon(self.config, f"desk-{self.runs}.log")
        return process, ready_api(self.db, process=process)

    def produce(self, topic: str, records: list[dict[str, Any]]) -> None:
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        for record in records:
            producer.send(topic, json.dumps(record).encode())
        producer.flush(timeout=60)
        producer.close()


@pytest.fixture
def refusing() -> Iterator[TestServer]:
    """An action sink that is away: every delivery gets 503."""
    def away(request: Request) -> Reply:
        return Reply(status=503, body={"error": "down for maintenance"})

    with TestServer(away) as server:
        yield server


def call(api: str, method: str, path: str, body: dict[str, Any] | None = None
         ) -> tuple[int, Any]:
    status, text = get(api + path, token=TOKEN, method=method, body=body)
    return status, json.loads(text) if text else None


def test_verdicts_publish_approved_and_edited_actions_once_across_a_sigkill(
        kafka_bootstrap: str, tmp_path: Path, refusing: TestServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the agent
    desk = Desk(tmp_path, kafka_bootstrap)
    desk.write(f"{{kind: webhook, url: {refusing.url}/actions}}")
    daemon, api = desk.start()
    try:
        status, _ = call(api, "POST", "/rollout/promote",
                         {"actor": "dana", "reason": "the desk goes live", "force": True})
        assert status == 200
        desk.produce(desk.events, events())
        proposed = consume_all(kafka_bootstrap, desk.reviews, len(REVIEW))
        assert sorted(json.loads(m.value)["review_id"] for m in proposed) == sorted(
            review_id_of(f"e{i}") for i in REVIEW)
        status, listed = call(api, "GET", "/reviews?status=open&limit=10")
        assert status == 200
        # The status the daemon serves explains the policy with the tiers' shares.
        tiers = wait_until(lambda: call(api, "GET", "/rollout")[1]["tiers"],
                           accept=lambda t: t["recent"]["predictions"] == len(KINDS),
                           timeout_s=30, what="every prediction assessed")
        assert [rule["rule"] for rule in tiers["rules"]] == [
            f"rules[{i}]" for i in range(len(POLICY["rules"]))]
        assert tiers["recent"]["shares"]["auto"] == pytest.approx(len(AUTO) / len(KINDS))
        assert tiers["recent"]["shares"]["review"] == pytest.approx(len(REVIEW) / len(KINDS))
        assert sorted((r["review_id"], r["proposal"]["evidence"]["subject"])
                      for r in listed["reviews"]) == sorted(
            (review_id_of(f"e{i}"), f"Subject {i}") for i in REVIEW)

        desk.produce(desk.verdicts, [
            verdict_record(APPROVED, "approved"), verdict_record(EDITED, "edit", EDIT),
            verdict_record(REJECTED, "rejected"), verdict_record(APPROVED, "reject"),
            {**verdict_record(APPROVED, "approve"), "review": {"id": "rev_nobody"}}])
        wait_until(lambda: call(api, "GET", "/reviews")[1]["reviews"] == [],
                   timeout_s=60, what="every review decided")
        dead = wait_until(
            lambda: [d for d in call(api, "GET", "/dead-letters")[1]["dead_letters"]
                     if d["kind"] == "verdict"],
            accept=lambda found: len(found) == 2, timeout_s=60, what="two verdict dead letters")
        # Through the API: the same verdict again is answered alike, another one refused.
        status, same = call(api, "POST", f"/reviews/{review_id_of(f'e{APPROVED}')}/verdict",
                            {"verdict": "approve", "reviewer": "sam"})
        assert status == 200, same
        assert (same["status"], same["reviewer"], same["published_at"]) == (
            "approved", "sam", None)  # the action sink is still away
        status, refused = call(api, "POST", f"/reviews/{review_id_of(f'e{EDITED}')}/verdict",
                               {"verdict": "reject"})
        assert status == 409 and "already has a verdict (edit)" in refused["error"]
    finally:
        code, log = stop(daemon, signal.SIGKILL)  # the verdicts are stored, none published
    assert code == -signal.SIGKILL
    assert sorted(d["reason"] for d in dead) == [
        "no review 'rev_nobody': the review_id is not one the rollout proposed",
        f"review '{review_id_of(f'e{APPROVED}')}' already has a verdict (approve)"]
    assert "Traceback" not in log
    with Store(desk.db) as store:
        waiting = store.db.execute(
            "SELECT review_id, verdict FROM review_verdicts WHERE published_at IS NULL "
            "ORDER BY review_id").fetchall()
    assert waiting == sorted([(review_id_of(f"e{APPROVED}"), "approve"),
                              (review_id_of(f"e{EDITED}"), "edit"),
                              (review_id_of(f"e{REJECTED}"), "reject")])

    desk.write(f'{{kind: kafka, bootstrap: "{kafka_bootstrap}", topic: {desk.actions}}}')
    again, api = desk.start()
    try:
        consume_all(kafka_bootstrap, desk.actions, len(AUTO) + 2)
    finally:
        code, log = stop(again)
    assert code == 0, log

    published = [json.loads(m.value) for m in
                 consume_all(kafka_bootstrap, desk.actions, len(AUTO) + 2, timeout_s=30)]
    reviewed = sorted((m["idempotency_key"], m["event_id"], m["verdict"], m["output"])
                      for m in published if "review_id" in m)
    assert reviewed == sorted([
        (act_key(APPROVED), f"e{APPROVED}", "approve", {
            "actions": [{"tool": "send_reply", "arguments": {"body": f"Dear customer {APPROVED}"},
                         "confidence": 0.9}], "note": f"case {APPROVED}"}),
        (act_key(EDITED), f"e{EDITED}", "edit", EDIT)])
    acted = sorted(m["event_id"] for m in published if "review_id" not in m)
    assert acted == sorted(f"e{i}" for i in AUTO)
    assert f"e{REJECTED}" not in {m["event_id"] for m in published}
    assert len(published) == len(AUTO) + 2  # each once: nothing published twice
    assert all(KINDS[int(m["event_id"][1:])] != "refund" for m in published)


def post_json(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_verdicts_pushed_to_a_webhook_publish_to_a_file_sink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the agent
    config = tmp_path / "hooks.yaml"
    config.write_text(f"""
candidate: {{callable: "tests.rollout.test_review_sink:agent", name: desk-agent, version: "4"}}
store: {{path: hooks.duckdb}}
sources:
  events: [{{kind: webhook, name: tickets, path: /hooks/tickets}}]
  verdicts: [{{kind: webhook, name: verdicts, path: /hooks/verdicts}}]
rollout:
  name: desk
  steps: [{{percent: 0}}, {{percent: 100}}]
  tiers: {json.dumps(POLICY)}
  sink: {{kind: file, path: actions.jsonl}}
  review_sink: {{kind: file, path: reviews.jsonl}}
daemon:
  api: {{port: 0}}
  webhooks: {{port: 0}}
""", encoding="utf-8")
    daemon = start_daemon(config, "hooks.log")
    try:
        api = ready_api(tmp_path / "hooks.duckdb", process=daemon)
        hooks = call(api, "GET", "/ready")[1]["checks"]["webhooks"]
        assert call(api, "POST", "/rollout/promote",
                    {"actor": "dana", "reason": "live", "force": True})[0] == 200
        assert post_json(hooks + "/hooks/tickets", events())[0] == 200
        wait_until(lambda: len(call(api, "GET", "/reviews")[1]["reviews"]),
                   accept=lambda n: n == len(REVIEW), timeout_s=60, what="the proposals")
        status, answer = post_json(hooks + "/hooks/verdicts", [
            {"review_id": review_id_of(f"e{APPROVED}"), "verdict": "approve",
             "decided_at": DECIDED},
            {"review_id": review_id_of(f"e{EDITED}"), "verdict": "edit", "output": EDIT,
             "reviewer": "sam", "decided_at": DECIDED},
            {"review_id": review_id_of(f"e{REJECTED}"), "verdict": "reject",
             "decided_at": DECIDED},
            {"review_id": review_id_of(f"e{REJECTED}"), "verdict": "edit",
             "decided_at": DECIDED}])
        assert (status, answer["status"]) == (200, "stored")  # stored, the last dead-lettered
        [dead] = [d for d in call(api, "GET", "/dead-letters")[1]["dead_letters"]
                  if d["kind"] == "verdict"]
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    assert dead["reason"] == (f"review '{review_id_of(f'e{REJECTED}')}': an edit needs the "
                              f"edited output")
    published = [json.loads(line) for line in
                 (tmp_path / "actions.jsonl").read_text(encoding="utf-8").splitlines()]
    reviewed = sorted((m["idempotency_key"], m["verdict"], m["reviewer"]) for m in published
                      if "review_id" in m)
    assert reviewed == sorted([(act_key(APPROVED), "approve", None),
                               (act_key(EDITED), "edit", "sam")])
    assert sorted(m["event_id"] for m in published if "review_id" not in m) == sorted(
        f"e{i}" for i in AUTO)


def test_a_mailbox_cannot_carry_verdicts(tmp_path: Path) -> None:
    config = parse_config({
        "candidate": {"callable": "tests.rollout.test_review_sink:agent"},
        "sources": {"events": [{"kind": "file", "path": "events.jsonl"}],
                    "verdicts": [{"kind": "imap", "name": "reviews", "host": "mail.example.com",
                                  "username": "desk", "password_env": "MAIL_PASSWORD"}]},
        "daemon": {"api": {"token_env": "DESK_TOKEN"}}}, origin="test")
    problems = startup_problems(config, store_path=tmp_path / "s.duckdb", base_dir=tmp_path,
                                environ={"DESK_TOKEN": "a-token-for-tests"})
    assert problems == ["sources.verdicts.0: verdicts come from a file, Kafka or a webhook, "
                        "not imap"]
