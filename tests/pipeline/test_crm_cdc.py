"""configs/crm-cdc.yaml: a Debezium change stream of CRM deals, replayed from its sample
file by ``shadow replay`` and from a real Kafka topic. New deals are events, updates of
stage or owner are outcomes, everything else is skipped; every count is checked against
figures computed here from the sample messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from kafka import KafkaProducer

from connectors.kafka import KafkaSource, Start
from connectors.mapping import EventMapper, OutcomeMapper
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.file import load_config
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline, ReplaySummary
from shadow.store.database import Store
from tests.connectors.test_kafka import produce

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "crm-cdc.yaml"
DEALS = ROOT / "configs" / "samples" / "crm-deals-cdc.jsonl"
CANDIDATE = "tests.pipeline.test_crm_cdc:deal_desk"

_REGIONS = {"DE": "emea", "FR": "emea", "GB": "emea", "AT": "emea", "NO": "emea", "PT": "emea",
            "US": "amer", "CA": "amer"}


def deal_desk(event: Event) -> dict[str, Any]:
    """The candidate of configs/crm-cdc.yaml: a stage by amount, an owner by region and size."""
    deal = event.payload
    size = "enterprise" if deal["amount"] >= 50_000 else "smb"
    return {"stage": "qualified" if deal["amount"] >= 10_000 else "nurture",
            "owner": f"{_REGIONS.get(deal['country'], 'apac')}-{size}"}


def messages() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DEALS.read_text(encoding="utf-8").splitlines()]


def is_new_deal(message: dict[str, Any]) -> bool:
    return bool(message["payload"]["op"] in ("c", "r"))


def is_decision(message: dict[str, Any]) -> bool:
    payload = message["payload"]
    if payload["op"] != "u":
        return False
    before, after = payload["before"], payload["after"]
    return bool(before["stage"] != after["stage"] or before["owner"] != after["owner"])


class Expected:
    """What the sample file should give, read from it without the tool's mapping."""

    def __init__(self) -> None:
        rows = messages()
        self.read = len(rows)
        new = [row["payload"]["after"] for row in rows if is_new_deal(row)]
        self.deals = {deal["id"]: deal for deal in new}
        self.duplicates = len(new) - len(self.deals)
        self.events_skipped = self.read - len(new)
        decisions = [row["payload"] for row in rows if is_decision(row)]
        self.decisions = sorted(
            (d["after"]["id"], datetime.fromtimestamp(d["source"]["ts_ms"] / 1000, UTC),
             d["after"]["stage"], d["after"]["owner"], d["after"]["updated_by"])
            for d in decisions)
        self.outcomes_skipped = self.read - len(decisions)
        final: dict[str, tuple[datetime, str, str]] = {}
        for key, at, stage, owner, _ in self.decisions:
            if key not in final or at >= final[key][0]:
                final[key] = (at, stage, owner)
        self.compared = sorted(
            (key, deal_desk(self._event(key)) == {"stage": stage, "owner": owner})
            for key, (_, stage, owner) in final.items())
        self.fields = sorted(
            (key, field, deal_desk(self._event(key))[field] == value)
            for key, (_, stage, owner) in final.items()
            for field, value in (("stage", stage), ("owner", owner)))

    def _event(self, key: str) -> Event:
        return Event(event_id=key, key=key, occurred_at=datetime.now(UTC),
                     payload=self.deals[key])


EXPECTED = Expected()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def test_the_samples_hold_every_kind_of_change() -> None:
    ops = [row["payload"]["op"] for row in messages()]

    assert set(ops) == {"r", "c", "u", "d"}
    assert EXPECTED.duplicates == 1
    assert 0 < len(EXPECTED.decisions) < ops.count("u")      # some updates are not decisions
    assert 0 < sum(agree for _, agree in EXPECTED.compared) < len(EXPECTED.compared)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The store after the replay command of the config's comments, run twice; both outputs."""
    db = tmp_path_factory.mktemp("cdc") / "deals.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    command = [sys.executable, "-m", "shadow", "replay", str(DEALS), "--outcomes", str(DEALS),
               "--config", str(CONFIG), "--candidate", CANDIDATE, "--db", str(db)]
    outputs = []
    for _ in range(2):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    return db, outputs


def test_the_replay_counts_new_deals_decisions_and_skipped_records(
    replayed: tuple[Path, list[str]],
) -> None:
    first = replayed[1][0]
    e = EXPECTED

    assert re.search(rf"^events read +{e.read} = stored {len(e.deals)} \+ duplicates "
                     rf"{e.duplicates} \+ dead letters 0 \+ skipped {e.events_skipped}$",
                     first, re.M), first
    assert re.search(rf"^outcomes read +{e.read} = stored {len(e.decisions)} \+ duplicates 0 "
                     rf"\+ dead letters 0 \+ skipped {e.outcomes_skipped}$", first, re.M), first


def test_new_deals_are_the_events_with_the_row_as_payload(
    replayed: tuple[Path, list[str]],
) -> None:
    stored = query(replayed[0], "SELECT event_id, key, payload FROM events ORDER BY event_id")

    assert [(i, k, orjson.loads(p)) for i, k, p in stored] == [
        (deal_id, deal_id, deal) for deal_id, deal in sorted(EXPECTED.deals.items())]


def test_updates_of_stage_or_owner_are_the_outcomes(replayed: tuple[Path, list[str]]) -> None:
    stored = query(replayed[0], "SELECT key, decided_at, outcome, actor FROM outcomes "
                                "ORDER BY key, decided_at")

    assert [(k, d, orjson.loads(o)["stage"], orjson.loads(o)["owner"], a)
            for k, d, o, a in stored] == EXPECTED.decisions


def test_skipped_records_are_not_dead_letters(replayed: tuple[Path, list[str]]) -> None:
    assert query(replayed[0], "SELECT count(*) FROM dead_letters") == [(0,)]


def test_each_deal_is_compared_with_the_persons_last_decision(
    replayed: tuple[Path, list[str]],
) -> None:
    db = replayed[0]

    assert query(db, "SELECT event_id, agree FROM comparisons ORDER BY event_id") == (
        EXPECTED.compared)
    assert query(db, "SELECT event_id, field, agree FROM comparison_fields "
                     "ORDER BY event_id, field") == EXPECTED.fields


def test_replaying_again_stores_nothing_and_skips_the_same(
    replayed: tuple[Path, list[str]],
) -> None:
    second = replayed[1][1]
    e = EXPECTED
    new_deals = len(e.deals) + e.duplicates

    assert re.search(rf"^events read +{e.read} = stored 0 \+ duplicates {new_deals} "
                     rf"\+ dead letters 0 \+ skipped {e.events_skipped}$", second, re.M), second
    assert re.search(rf"\+ skipped {e.outcomes_skipped}$", second, re.M), second
    assert re.search(r"^predictions +0 ", second, re.M), second


def test_the_change_stream_replayed_from_kafka_gives_the_same_counts_tombstones_skipped(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = load_config(CONFIG)
    (events_spec,), (outcomes_spec,) = config.sources.events, config.sources.outcomes
    assert events_spec.kind == outcomes_spec.kind == "kafka"
    assert events_spec.topics == outcomes_spec.topics and events_spec.group != outcomes_spec.group
    topic = f"crm.public.deals-{uuid.uuid4().hex[:10]}"
    rows = messages()
    produce(kafka_bootstrap, topic, rows,
            key=lambda row: json.dumps({"id": (row["payload"]["after"]
                                               or row["payload"]["before"])["id"]}))
    # Debezium follows each delete with a tombstone: a message with the key and no value.
    deleted = [row["payload"]["before"]["id"] for row in rows if row["payload"]["op"] == "d"]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for ident in deleted:
        producer.send(topic, None, key=json.dumps({"id": ident}).encode())
    producer.flush(timeout=30)
    producer.close()

    def source(group: str) -> KafkaSource:
        return KafkaSource(bootstrap=kafka_bootstrap, topics=[topic], group_id=f"{group}-{topic}",
                           start=Start.EARLIEST, poll_timeout_s=0.5, idle_s=3.0)

    candidate = CallableCandidate(deal_desk, name="deal-desk")
    with Store(tmp_path / "deals.duckdb") as store:
        pipeline = Pipeline(store, candidate, build_comparator(config.comparator),
                            event_mapper=EventMapper(config.mapping.events),
                            outcome_mapper=OutcomeMapper(config.mapping.outcomes))
        summary = pipeline.run([source(events_spec.group)], [source(outcomes_spec.group)])
        compared = store.db.execute(
            "SELECT event_id, agree FROM comparisons ORDER BY event_id").fetchall()

    e, tombstones = EXPECTED, len(deleted)
    assert tombstones > 0
    assert counts(summary) == {
        "events_read": e.read + tombstones, "events_stored": len(e.deals),
        "duplicates": e.duplicates, "dead_letters": 0,
        "events_skipped": e.events_skipped + tombstones,
        "outcomes_read": e.read + tombstones, "outcomes_stored": len(e.decisions),
        "outcome_duplicates": 0, "outcome_dead_letters": 0,
        "outcomes_skipped": e.outcomes_skipped + tombstones,
        "predictions": len(e.deals), "compared": len(e.compared),
        "agreed": sum(agree for _, agree in e.compared)}
    assert compared == e.compared


def counts(summary: ReplaySummary) -> dict[str, int]:
    names = ("events_read", "events_stored", "duplicates", "dead_letters", "events_skipped",
             "outcomes_read", "outcomes_stored", "outcome_duplicates", "outcome_dead_letters",
             "outcomes_skipped", "predictions", "compared", "agreed")
    return {name: getattr(summary, name) for name in names}
