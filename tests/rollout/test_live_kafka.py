"""A rollout configured end to end: live decisions and announcements on real Kafka topics."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer

from shadow.store.database import Store
from tests.cli.test_cli import run
from tests.cli.test_rollout_commands import CANDIDATE, prepare
from tests.waiting import wait_until


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"check-{topic}",
                             auto_offset_reset="earliest", enable_auto_commit=False)
    messages: list[Any] = []

    def polled(timeout_ms: int = 500) -> int:
        for batch in consumer.poll(timeout_ms=timeout_ms).values():
            messages.extend(batch)
        return len(messages)

    try:
        wait_until(polled, accept=lambda n: n >= expected, timeout_s=timeout_s, interval_s=0,
                   what=f"{expected} messages on {topic}")
        polled(1500)  # anything beyond the expected count would be a repeat: wait a little for it
    finally:
        consumer.close()
    return messages


def test_live_decisions_and_the_promotion_reach_their_topics(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    decisions, announcements = f"decisions-{suffix}", f"rollouts-{suffix}"
    config = f"""
candidate: {{callable: triage:triage, name: triage, version: "3"}}
store: {{path: shadow.duckdb}}
rollout:
  name: triage
  steps:
    - {{percent: 0, min_compared: 100}}
    - {{percent: 100}}
  gates: {{agreement: 0.8}}
  holdout: 0.1
  sink: {{kind: kafka, bootstrap: "{kafka_bootstrap}", topic: {decisions}}}
  notify: [{{kind: kafka, bootstrap: "{kafka_bootstrap}", topic: {announcements}}}]
"""
    directory = prepare(tmp_path, config)
    assert (directory / "triage.py").read_text(encoding="utf-8") == CANDIDATE
    result = run(directory, "replay", "events.jsonl", "--outcomes", "outcomes.jsonl",
                 "--config", "shadow.yaml", "--quiet", "--write-batch", "100")
    assert result.returncode == 0, result.stderr

    with Store(directory / "shadow.duckdb", read_only=True) as store:
        live = dict(store.db.execute(
            "SELECT p.event_id, e.key FROM predictions p JOIN events e USING (event_id) "
            "WHERE p.mode = 'live'").fetchall())
        shadow_ids = {r[0] for r in store.db.execute(
            "SELECT event_id FROM predictions WHERE mode = 'shadow'").fetchall()}
    assert len(live) > 100
    messages = consume_all(kafka_bootstrap, decisions, len(live))
    published = {dict(m.headers)["event_id"].decode(): m for m in messages}
    assert len(messages) == len(published) == len(live)  # each once
    assert set(published) == set(live) and not set(published) & shadow_ids
    some = next(iter(published.values()))
    assert some.key.decode() == live[dict(some.headers)["event_id"].decode()]
    assert json.loads(some.value)["rollout"] == "triage"

    told = [json.loads(m.value) for m in consume_all(kafka_bootstrap, announcements, 2)]
    assert [a["action"] for a in told] == ["start", "promote"]
    announced = told[1]
    assert (announced["actor"], announced["to_step"], announced["percent"]) == (
        "controller", 1, 100.0)
    assert any(c["name"] == "agreement" and c["phase"] == "pass"
               for c in announced["evidence"]["checks"])
