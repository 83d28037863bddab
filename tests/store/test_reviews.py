"""Tiers of predictions and proposals of tier review (migration 14), on real DuckDB files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from shadow.core.models import Event, Mode, Prediction
from shadow.store import reviews
from shadow.store.database import Store
from shadow.store.migrations import MIGRATIONS, migrate
from shadow.store.writes import StoredEvent, WriteBatch
from tests.store.old_stores import migrate_up_to

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "shadow.duckdb") as opened:
        yield opened


def stored(store: Store, *ids: str, mode: Mode = Mode.LIVE) -> None:
    batch = WriteBatch()
    for i, event_id in enumerate(ids):
        event = Event(event_id=event_id, key=f"k-{event_id}", occurred_at=NOW,
                      payload={"subject": event_id})
        batch.events.append(StoredEvent(event, "test", str(i)))
        batch.predictions.append(Prediction(
            event_id=event_id, candidate="desk", version="2", mode=mode,
            output={"label": event_id}, latency_ms=1.0,
            predicted_at=NOW + timedelta(seconds=i), step=1))
    store.write(batch)


def proposed(event_id: str, text: str) -> reviews.Proposed:
    return reviews.Proposed(review_id=f"rev_{event_id}", key=f"k-{event_id}", rollout="desk",
                            live=True, step=1, proposed_at=NOW, proposal={"text": text})


def test_a_store_of_the_previous_version_gains_tiers_and_an_empty_reviews_table(
        tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        migrate_up_to(db, 13)
        db.execute("INSERT INTO events (event_id, key, routing_key, occurred_at, segment, "
                   "payload, source, position) VALUES ('e1', 'k1', 'k1', ?, '{}', '{}', 's', "
                   "'0')", [NOW])
        db.execute("INSERT INTO predictions (event_id, candidate, version, mode, output, "
                   "latency_ms, predicted_at) VALUES ('e1', 'desk', '2', 'live', '\"a\"', 1, ?)",
                   [NOW])
        assert migrate(db) == max(version for version, _ in MIGRATIONS) >= 14

    with Store(path) as store:
        assert store.db.execute("SELECT event_id, tier, tier_rule FROM predictions"
                                ).fetchall() == [("e1", None, None)]
        assert store.count("reviews") == 0
        [row] = reviews.unassessed(store, "desk", "2", 10)
        assert (row.event_id, row.key, row.live, row.output) == ("e1", "k1", True, "a")


def test_tiers_and_proposals_are_stored_together(store: Store) -> None:
    stored(store, "e1", "e2", "e3")
    reviews.record_assessed(store, "desk", "2", [
        reviews.Assessed("e1", "auto", "rules[0]"),
        reviews.Assessed("e2", "review", "rules[1]", proposed("e2", "first")),
        reviews.Assessed("e3", "human", "default"),
    ])
    assert store.db.execute("SELECT event_id, tier, tier_rule FROM predictions "
                            "ORDER BY event_id").fetchall() == [
        ("e1", "auto", "rules[0]"), ("e2", "review", "rules[1]"), ("e3", "human", "default")]
    assert reviews.unassessed(store, "desk", "2", 10) == []
    assert reviews.unpublished(store, "desk", "2", "desk", 10) == [("rev_e2", {"text": "first"})]
    assert reviews.tier_counts(store, "desk", "2") == {"auto": 1, "review": 1, "human": 1}


def test_a_proposal_stored_again_keeps_the_first(store: Store) -> None:
    stored(store, "e1")
    reviews.record_assessed(store, "desk", "2", [
        reviews.Assessed("e1", "review", "rules[1]", proposed("e1", "first"))])
    reviews.record_assessed(store, "desk", "2", [
        reviews.Assessed("e1", "review", "rules[1]", proposed("e1", "second"))])
    assert store.db.execute("SELECT review_id, status, proposal->>'text' FROM reviews"
                            ).fetchall() == [("rev_e1", "open", "first")]


def test_published_proposals_leave_the_outbox(store: Store) -> None:
    stored(store, "e1", "e2")
    reviews.record_assessed(store, "desk", "2", [
        reviews.Assessed("e1", "review", "rules[1]", proposed("e1", "one")),
        reviews.Assessed("e2", "review", "rules[1]", proposed("e2", "two"))])
    reviews.mark_published(store, ["rev_e1"], NOW)
    assert reviews.unpublished(store, "desk", "2", "desk", 10) == [("rev_e2", {"text": "two"})]
    assert reviews.withdraw(store, "desk", "2", before=NOW + timedelta(seconds=1)) == 1
    assert store.db.execute("SELECT review_id, status FROM reviews ORDER BY review_id"
                            ).fetchall() == [("rev_e1", "open"), ("rev_e2", "withdrawn")]


def test_tier_counts_since_a_time(store: Store) -> None:
    stored(store, "e1", "e2", "e3")
    reviews.record_assessed(store, "desk", "2", [
        reviews.Assessed("e1", "auto", "rules[0]"), reviews.Assessed("e2", "auto", "rules[0]"),
        reviews.Assessed("e3", "human", "default")])
    assert reviews.tier_counts(store, "desk", "2", since=NOW + timedelta(seconds=1)) == {
        "auto": 1, "human": 1}
    assert reviews.tier_counts(store, "desk", "other") == {}


def test_tier_counts_of_the_latest_predictions(store: Store) -> None:
    stored(store, "e1", "e2", "e3")  # one second apart, e3 the latest
    reviews.record_assessed(store, "desk", "2", [
        reviews.Assessed("e1", "human", "default"), reviews.Assessed("e2", "auto", "rules[0]"),
        reviews.Assessed("e3", "review", "rules[1]")])
    assert reviews.tier_counts(store, "desk", "2", latest=2) == {"auto": 1, "review": 1}
