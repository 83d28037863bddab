"""Review verdicts (migration 15) on real DuckDB files: the first verdict wins, repeats
add nothing, conflicts and unknown reviews come back as problems, approves and edits
become outcomes of source ``review``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow.core.models import Event, Mode, Prediction
from shadow.store import reviews, verdicts
from shadow.store.database import Store
from shadow.store.migrations import MIGRATIONS, migrate
from shadow.store.verdicts import ProblemKind, Verdict
from shadow.store.writes import StoredEvent, WriteBatch
from tests.store.old_stores import migrate_up_to

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "shadow.duckdb") as opened:
        yield opened


def output_of(event_id: str) -> dict[str, Any]:
    return {"actions": [{"tool": "send_reply", "arguments": {"body": f"Hello {event_id}"}}]}


def proposed(store: Store, *ids: str, mode: Mode = Mode.LIVE) -> None:
    """Events, their predictions and their stored proposals ``rev_<id>``."""
    batch = WriteBatch()
    for i, event_id in enumerate(ids):
        event = Event(event_id=event_id, key=f"k-{event_id}", occurred_at=NOW, payload={})
        batch.events.append(StoredEvent(event, "test", str(i)))
        batch.predictions.append(Prediction(
            event_id=event_id, candidate="desk", version="2", mode=mode,
            output=output_of(event_id), latency_ms=1.0, predicted_at=NOW, step=1))
    store.write(batch)
    reviews.record_assessed(store, "desk", "2", [reviews.Assessed(
        event_id, "review", "rules[0]", reviews.Proposed(
            review_id=f"rev_{event_id}", key=f"k-{event_id}", rollout="desk",
            live=mode is Mode.LIVE, step=1, proposed_at=NOW,
            proposal={"event_id": event_id, "output": output_of(event_id)}))
        for event_id in ids])


def verdict(review_id: str, word: str, output: Any = None, *, reviewer: str = "dana",
            position: str = "0") -> Verdict:
    return Verdict(review_id, word, output, reviewer, NOW, "kafka:verdicts", position)


def stored_verdicts(store: Store) -> list[tuple[Any, ...]]:
    rows = store.db.execute(
        "SELECT review_id, verdict, output, reviewer, decided_at, received_at, source, "
        "position, published_at FROM review_verdicts ORDER BY review_id").fetchall()
    return [(r[0], r[1], None if r[2] is None else json.loads(r[2]), *r[3:]) for r in rows]


def statuses(store: Store) -> dict[str, str]:
    return dict(store.db.execute("SELECT review_id, status FROM reviews").fetchall())


def outcomes(store: Store) -> list[tuple[Any, ...]]:
    rows = store.db.execute("SELECT key, decided_at, outcome, actor, source, position "
                            "FROM outcomes ORDER BY key").fetchall()
    return [(r[0], r[1], json.loads(r[2]), *r[3:]) for r in rows]


def test_a_store_of_the_previous_version_gains_an_empty_verdicts_table(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        migrate_up_to(db, 14)
        assert migrate(db) == max(version for version, _ in MIGRATIONS)
    with Store(path) as store:
        assert store.count("review_verdicts") == 0


def test_each_verdict_is_stored_with_its_status_and_what_it_publishes(store: Store) -> None:
    proposed(store, "e1", "e2", "e3")
    edited = {"actions": [{"tool": "send_reply", "arguments": {"body": "Better"}}]}
    answers = verdicts.record_verdicts(store, [
        verdict("rev_e1", "approve", {"ignored": True}, position="0"),
        verdict("rev_e2", "edited", edited, reviewer="sam", position="1"),
        verdict("rev_e3", "REJECTED", position="2")], received_at=LATER)
    assert [problem for _, problem in answers] == [None, None, None]
    assert stored_verdicts(store) == [
        ("rev_e1", "approve", output_of("e1"), "dana", NOW, LATER, "kafka:verdicts", "0", None),
        ("rev_e2", "edit", edited, "sam", NOW, LATER, "kafka:verdicts", "1", None),
        ("rev_e3", "reject", None, "dana", NOW, LATER, "kafka:verdicts", "2", None)]
    assert statuses(store) == {"rev_e1": "approved", "rev_e2": "edited", "rev_e3": "rejected"}


def test_approves_and_edits_are_the_persons_outcome_rejects_are_not(store: Store) -> None:
    proposed(store, "e1", "e2", "e3")
    edited = {"actions": [{"tool": "send_reply", "arguments": {"body": "Better"}}]}
    verdicts.record_verdicts(store, [
        verdict("rev_e1", "approve"), verdict("rev_e2", "edit", edited, reviewer="sam"),
        verdict("rev_e3", "reject")], received_at=LATER)
    assert outcomes(store) == [
        ("k-e1", NOW, output_of("e1"), "dana", "review", "rev_e1"),
        ("k-e2", NOW, edited, "sam", "review", "rev_e2")]
    # The outcome's actions are stored as any outcome's are, for the action comparisons.
    assert store.db.execute("SELECT key, tool FROM actions WHERE side = 'outcome' "
                            "ORDER BY key").fetchall() == [("k-e1", "send_reply"),
                                                            ("k-e2", "send_reply")]


def test_the_same_verdict_again_adds_nothing(store: Store) -> None:
    proposed(store, "e1")
    verdicts.record_verdicts(store, [verdict("rev_e1", "approve")], received_at=NOW)
    again = verdicts.record_verdicts(
        store, [verdict("rev_e1", "approved", position="7")], received_at=LATER)
    assert [problem for _, problem in again] == [None]
    assert [row[5:8] for row in stored_verdicts(store)] == [(NOW, "kafka:verdicts", "0")]
    assert len(outcomes(store)) == 1


def test_a_second_different_verdict_is_refused_and_the_first_stands(store: Store) -> None:
    proposed(store, "e1")
    answers = verdicts.record_verdicts(store, [
        verdict("rev_e1", "approve"), verdict("rev_e1", "reject", position="1")],
        received_at=NOW)
    (_, first), (_, second) = answers
    assert first is None and second is not None
    assert second.kind is ProblemKind.DECIDED
    assert str(second) == "review 'rev_e1' already has a verdict (approve)"
    assert statuses(store) == {"rev_e1": "approved"}
    later = verdicts.record_verdicts(
        store, [verdict("rev_e1", "approve", reviewer="sam")], received_at=LATER)
    assert str(later[0][1]) == "review 'rev_e1' already has a verdict (approve)"
    assert [row[1:4] for row in stored_verdicts(store)] == [
        ("approve", output_of("e1"), "dana")]


def test_a_verdict_for_an_unknown_review_is_refused(store: Store) -> None:
    proposed(store, "e1")
    [(_, problem)] = verdicts.record_verdicts(store, [verdict("rev_nope", "approve")],
                                              received_at=NOW)
    assert problem is not None and problem.kind is ProblemKind.UNKNOWN
    assert "rev_nope" in str(problem)
    assert store.count("review_verdicts") == 0 and statuses(store) == {"rev_e1": "open"}


def test_an_edit_without_an_output_is_refused(store: Store) -> None:
    proposed(store, "e1")
    [(_, problem)] = verdicts.record_verdicts(store, [verdict("rev_e1", "edit")],
                                              received_at=NOW)
    assert problem is not None and problem.kind is ProblemKind.INVALID
    assert str(problem) == "review 'rev_e1': an edit needs the edited output"
    assert store.count("review_verdicts") == 0 and statuses(store) == {"rev_e1": "open"}


def test_an_unknown_verdict_word_is_refused(store: Store) -> None:
    proposed(store, "e1")
    [(_, problem)] = verdicts.record_verdicts(store, [verdict("rev_e1", "maybe")],
                                              received_at=NOW)
    assert problem is not None and problem.kind is ProblemKind.INVALID
    assert "'maybe'" in str(problem)


def test_a_withdrawn_proposal_takes_no_verdict(store: Store) -> None:
    proposed(store, "e1")
    reviews.withdraw(store, "desk", "2", before=LATER)
    [(_, problem)] = verdicts.record_verdicts(store, [verdict("rev_e1", "approve")],
                                              received_at=NOW)
    assert problem is not None and problem.kind is ProblemKind.CLOSED
    assert statuses(store) == {"rev_e1": "withdrawn"}


def test_open_reviews_are_the_live_proposals_without_a_verdict(store: Store) -> None:
    proposed(store, "e1", "e2", "e3")
    proposed(store, "s1", mode=Mode.SHADOW)
    verdicts.record_verdicts(store, [verdict("rev_e2", "reject")], received_at=NOW)
    found = verdicts.open_reviews(store, limit=10)
    assert [(r.review_id, r.key, r.proposal["output"]) for r in found] == [
        ("rev_e1", "k-e1", output_of("e1")), ("rev_e3", "k-e3", output_of("e3"))]
    assert [r.review_id for r in verdicts.open_reviews(store, limit=1)] == ["rev_e1"]
    assert verdicts.open_reviews(store, candidate="other", limit=10) == []


def test_only_approved_and_edited_live_proposals_wait_for_the_action_sink(
        store: Store) -> None:
    proposed(store, "e1", "e2", "e3")
    proposed(store, "s1", mode=Mode.SHADOW)
    edited = {"label": "better"}
    verdicts.record_verdicts(store, [
        verdict("rev_e1", "approve"), verdict("rev_e2", "edit", edited),
        verdict("rev_e3", "reject"), verdict("rev_s1", "approve")], received_at=NOW)
    waiting = verdicts.unpublished(store, "desk", 10)
    assert [(a.review_id, a.verdict, a.output) for a in waiting] == [
        ("rev_e1", "approve", output_of("e1")), ("rev_e2", "edit", edited)]
    verdicts.mark_published(store, ["rev_e1"], LATER)
    assert [a.review_id for a in verdicts.unpublished(store, "desk", 10)] == ["rev_e2"]
    assert verdicts.unpublished(store, "other", 10) == []
