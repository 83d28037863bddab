"""A tier that breaks falls back through the daemon and a real Kafka broker.

``shadow run`` reads tickets and, from a source of their own (declared independent),
the people's outcomes from Kafka; a support desk's agent (:mod:`tests.service.tier_agent`)
is live at 100 %, its tags acting alone (tier auto, the action topic) and its reply drafts
proposed for review (tier review, the review topic). From ticket ``WRONG_FROM`` on its tags
go wrong: the auto tier's detector alarms and the controller makes a ``tier_fallback``
transition; from then on no tag reaches the action topic, tags are proposed on the review
topic instead, replies go on as before and the rollout stays at its live step.

The plan is the one of :mod:`tests.rollout.test_tier_fallback`: with one tag per ten
tickets and ``up`` = 9, the whole candidate's detector (and the review tier's, once the
wrong tags join it) rises by 9 on each wrong tag and falls back by 9 over the nine right
replies that follow, so it cannot alarm, while the auto tier's sees only wrong tags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from rollout.gates import detector
from shadow.config.rollout import RolloutSpec
from shadow.store.database import Store
from tests.daemon_process import TOKEN, get, ready_api, start_daemon, stop
from tests.rollout.test_live_kafka import consume_all
from tests.service.tier_agent import TAGS_WRONG_FROM, WRONG_TAG, is_tag, right
from tests.waiting import wait_until

# A backstop only (the budget below ends the scenario first); it also covers starting the
# session's broker when this is the first test to need it.
pytestmark = pytest.mark.timeout(240)

N = 600
WRONG_FROM = 200
"""The first ticket whose tag is wrong."""
FIRST_BATCH = 400
"""Tickets sent before the fallback is awaited; the rest come after it."""
START = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
BUDGET_S = 100
"""Every wait of the scenario, from starting the daemon to reading the topics, ends within
this together; stopping the daemon adds at most its ``shutdown_deadline`` (10 s)."""
PLAN: dict[str, Any] = {
    "name": "desk", "steps": [{"percent": 0}, {"percent": 100}],
    "gates": {"agreement": 0.9},
    "rollback": {"healthy": 0.94, "degraded": 0.85, "false_alarm": 0.01, "horizon": 10_000},
    "evaluate_every_compared": 10, "max_decision_age": None,
    "independent_sources": ["kafka:desk-outcomes-*"],
    "tiers": {"rules": [{"tool": "add_tag", "tier": "auto"},
                        {"tool": "send_reply", "tier": "review"}],
              "default": "human", "evidence": ["subject"]},
}


def event_id(i: int) -> str:
    """Zero-padded, so that ids sort as the tickets do."""
    return f"e{i:04d}"


def ticket_of(event: str) -> int:
    return int(event[1:])


def event(i: int) -> dict[str, Any]:
    return {"event_id": event_id(i), "key": f"T-{i:04d}",
            "occurred_at": (START + timedelta(minutes=i)).isoformat(),
            "payload": {"ticket": i, "subject": f"Ticket {i}"}}


def outcome(i: int) -> dict[str, Any]:
    return {"key": f"T-{i:04d}", "outcome": {"answer": right(i)},
            "decided_at": (START + timedelta(minutes=i, seconds=30)).isoformat()}


class Budget:
    """What is left of :data:`BUDGET_S`, so that every wait together stays within it."""

    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return max(self.ends - time.monotonic(), 1.0)


@dataclass(frozen=True)
class Run:
    db: Path
    status: dict[str, Any]
    """``shadow rollout status --format json`` against the running daemon, after the fallback."""
    actions: list[dict[str, Any]]
    action_times: dict[str, datetime]
    """When each message reached the action topic (its Kafka timestamp), by event id."""
    proposals: list[dict[str, Any]]
    log: str


class Desk:
    """The desk's configuration, topics and producer."""

    def __init__(self, directory: Path, bootstrap: str) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.bootstrap = bootstrap
        self.events, self.outcomes = f"desk-events-{suffix}", f"desk-outcomes-{suffix}"
        self.actions, self.reviews = f"desk-actions-{suffix}", f"desk-reviews-{suffix}"
        self.db = directory / "desk.duckdb"
        self.config = directory / "desk.yaml"
        group = "{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}"
        plan = {**PLAN,
                "sink": {"kind": "kafka", "bootstrap": bootstrap, "topic": self.actions},
                "review_sink": {"kind": "kafka", "bootstrap": bootstrap, "topic": self.reviews}}
        self.config.write_text(f"""
candidate: {{callable: "tests.service.tier_agent:agent", name: desk-agent, version: "7"}}
comparator: {{kind: exact, prediction_path: answer, outcome_path: answer}}
store: {{path: desk.duckdb}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.events}],
       group: desk-{suffix}, options: {group}}}
  outcomes:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{self.outcomes}],
       group: desk-{suffix}-outcomes, options: {group}}}
rollout: {json.dumps(plan)}
daemon:
  api: {{port: 0}}
  jobs: {{evaluate_every: 1s, compare_every: 1s, reports_dir: reports}}
  shutdown_deadline: 10s
""", encoding="utf-8")

    def produce(self, tickets: range, *, chunk: int = 20, pause_s: float = 0.2) -> None:
        """Each ticket and, right after it, its outcome, ``chunk`` tickets at a time, as a
        desk sends them: the daemon takes them in many batches, not one."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=20)
        for i in tickets:
            key = f"T-{i:04d}".encode()
            producer.send(self.events, json.dumps(event(i)).encode(), key=key)
            producer.send(self.outcomes, json.dumps(outcome(i)).encode(), key=key)
            if (i + 1) % chunk == 0:
                producer.flush(timeout=30)
                time.sleep(pause_s)
        producer.flush(timeout=30)
        producer.close()

    def status(self, timeout_s: float) -> dict[str, Any]:
        """``shadow rollout status --format json``, which asks the running daemon."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env["SHADOW_API_TOKEN"] = TOKEN
        done = subprocess.run(
            [sys.executable, "-m", "shadow", "rollout", "status", "--format", "json",
             "--config", str(self.config)], cwd=self.config.parent, env=env,
            capture_output=True, text=True, timeout=timeout_s, check=False)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))


def call(api: str, method: str, path: str, body: dict[str, Any] | None = None
         ) -> tuple[int, Any]:
    status, text = get(api + path, token=TOKEN, method=method, body=body)
    return status, json.loads(text) if text else None


def fallen(api: str) -> list[str] | None:
    status, view = call(api, "GET", "/rollout")
    if status != 200 or not view["evidence"]:
        return None
    return list(view["evidence"]["tiers"]["fallen"])


def stored(api: str) -> tuple[int, int]:
    """Predictions and outcomes the daemon has stored, from its report."""
    status, report = call(api, "GET", "/report?format=json")
    if status != 200 or not report["candidates"]:
        return 0, 0
    return report["candidates"][0]["predictions"], report["outcomes"]["stored"]


@pytest.fixture(scope="module")
def run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    desk = Desk(tmp_path_factory.mktemp("tier-fallback"), kafka_bootstrap)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))  # the agent
        env.setenv(TAGS_WRONG_FROM, str(WRONG_FROM))
        budget = Budget(BUDGET_S)
        daemon = start_daemon(desk.config, "desk.log")
    try:
        api = ready_api(desk.db, budget.left(), process=daemon)
        status, _ = call(api, "POST", "/rollout/promote",
                         {"actor": "dana", "reason": "the desk goes live", "force": True})
        assert status == 200
        desk.produce(range(FIRST_BATCH))
        wait_until(lambda: fallen(api), accept=lambda f: f == ["auto"],
                   timeout_s=budget.left(), interval_s=0.5, what="the auto tier to fall back")
        desk.produce(range(FIRST_BATCH, N))
        wait_until(lambda: stored(api), accept=lambda s: s == (N, N), timeout_s=budget.left(),
                   interval_s=0.5, what=f"{N} predictions and {N} outcomes stored")
        status_json = desk.status(budget.left())
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    with Store(desk.db, read_only=True) as store:
        (actions_sent, proposals_sent), = store.db.execute(
            "SELECT (SELECT count(*) FROM predictions WHERE published_at IS NOT NULL), "
            "(SELECT count(*) FROM reviews WHERE published_at IS NOT NULL)").fetchall()
    actions = consume_all(kafka_bootstrap, desk.actions, actions_sent, timeout_s=budget.left())
    proposals = consume_all(kafka_bootstrap, desk.reviews, proposals_sent,
                            timeout_s=budget.left())
    decoded = [json.loads(m.value) for m in actions]
    return Run(desk.db, status_json, decoded,
              {d["event_id"]: datetime.fromtimestamp(m.timestamp / 1000, UTC)
               for d, m in zip(decoded, actions, strict=True)},
              [json.loads(m.value) for m in proposals], log)


def fell_back_at(db: Path) -> tuple[datetime, dict[str, Any]]:
    with Store(db, read_only=True) as store:
        (at, evidence), = store.db.execute(
            "SELECT changed_at, evidence FROM rollout_audit WHERE action = 'tier_fallback'"
        ).fetchall()
    return at, json.loads(evidence)


def predictions(db: Path) -> list[tuple[Any, ...]]:
    """Each prediction: event id, output, tier, rule, mode, predicted, published, withdrawn."""
    with Store(db, read_only=True) as store:
        return store.db.execute(
            "SELECT event_id, output, tier, tier_rule, mode, predicted_at, published_at, "
            "withdrawn_reason FROM predictions ORDER BY event_id").fetchall()


def test_the_auto_tier_falls_back_and_the_rollout_stays_live(run: Run) -> None:
    with Store(run.db, read_only=True) as store:
        audit = store.db.execute(
            "SELECT action, actor, evidence->>'tier' FROM rollout_audit ORDER BY revision"
        ).fetchall()
        state = store.db.execute("SELECT step, status, fallen_tiers FROM rollout_state"
                                 ).fetchall()

    assert [(action, actor) for action, actor, _ in audit] == [
        ("start", "controller"), ("promote", "dana"), ("tier_fallback", "controller")]
    assert audit[-1][2] == "auto"
    assert state == [(1, "promoted", ["auto"])]
    assert "Traceback" not in run.log


def test_the_fallback_evidence_is_the_auto_tiers_detector(run: Run) -> None:
    _, evidence = fell_back_at(run.db)
    cusum = detector(RolloutSpec.model_validate({**PLAN, "sink": {"kind": "file", "path": "x"},
                                                 "review_sink": {"kind": "file", "path": "y"}}))
    healthy_tags = sum(is_tag(i) for i in range(WRONG_FROM))
    # From its healthy level each wrong tag raises the statistic by `up`: the alarm needs at
    # least threshold / up of them, and no more while only wrong tags follow.
    needed = -(-cusum.threshold // cusum.up)

    assert cusum.up == 9
    assert (evidence["tier"], evidence["to"]) == ("auto", "review")
    assert evidence["agreed"] == healthy_tags
    # The tier's units are fed in the order of their outcomes' decided_at, the tickets' own.
    assert evidence["alarmed_at"] == healthy_tags + needed <= evidence["units"]
    assert evidence["statistic"] >= evidence["threshold"] == cusum.threshold


def test_no_tag_reaches_the_action_topic_after_the_fallback(run: Run) -> None:
    fell_at, _ = fell_back_at(run.db)
    rows = {r[0]: r for r in predictions(run.db)}
    published_tags = [a["event_id"] for a in run.actions if is_tag(ticket_of(a["event_id"]))]

    assert published_tags, "tags acted on before the fallback"
    for event in published_tags:
        _, _, tier, rule, mode, predicted, published, _ = rows[event]
        assert (tier, rule, mode) == ("auto", "rules[0]", "live")
        assert predicted < fell_at and published < fell_at
        assert run.action_times[event] <= fell_at
    # Each decision once, and nothing but tags: replies are proposals only.
    assert sorted(a["event_id"] for a in run.actions) == sorted(published_tags)
    assert len(set(published_tags)) == len(published_tags)


def test_tags_after_the_fallback_are_proposed_for_review(run: Run) -> None:
    fell_at, _ = fell_back_at(run.db)
    rows = predictions(run.db)
    tags = [r for r in rows if is_tag(ticket_of(r[0]))]
    after = [r for r in tags if r[5] > fell_at]
    on_review = {p["event_id"]: p for p in run.proposals}
    with Store(run.db, read_only=True) as store:
        reviewed = {r[0] for r in store.db.execute("SELECT event_id FROM reviews").fetchall()}

    assert len(after) >= sum(is_tag(i) for i in range(FIRST_BATCH, N))
    assert all(json.loads(r[1])["answer"] == WRONG_TAG for r in after)
    moved = [r for r in tags if (r[2], r[3]) == ("review", "fallback")]
    assert {r[0] for r in after} <= {r[0] for r in moved}
    for r in moved:
        assert r[0] in reviewed and r[6] is None
        proposal = on_review[r[0]]
        assert (proposal["tier"], proposal["rule"], proposal["mode"]) == (
            "review", "fallback", "live")
        assert proposal["actions"] == [{"tool": "add_tag", "arguments": {"tag": WRONG_TAG}}]
        assert proposal["evidence"] == {"subject": f"Ticket {ticket_of(r[0])}"}
    # A tag assessed auto before the fallback went out before it, or was withdrawn.
    assert all(r[6] is not None or r[7] == "tier_fallback: tier auto fell back"
               for r in tags if r[2] == "auto")


def test_replies_are_unaffected(run: Run) -> None:
    replies = [r for r in predictions(run.db) if not is_tag(ticket_of(r[0]))]
    proposed = {p["event_id"] for p in run.proposals if not is_tag(ticket_of(p["event_id"]))}

    assert len(replies) == N - sum(is_tag(i) for i in range(N))
    assert {(r[2], r[3], r[4], r[7]) for r in replies} == {("review", "rules[1]", "live", None)}
    assert proposed == {r[0] for r in replies}
    assert all(json.loads(r[1])["answer"] == right(ticket_of(r[0])) for r in replies)


def test_status_shows_the_fallen_tier(run: Run) -> None:
    tiers = run.status["evidence"]["tiers"]
    by_tier = {d["tier"]: d for d in tiers["detectors"]}

    assert tiers["fallen"] == ["auto"]
    assert (run.status["step"], run.status["status"]) == (1, "promoted")
    assert by_tier["auto"]["alarmed_at"] is not None
    assert by_tier["review"]["alarmed_at"] is None
    assert run.status["evidence"]["detector"]["alarmed_at"] is None  # no rollback
