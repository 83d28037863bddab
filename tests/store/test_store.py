"""The DuckDB store: migrations, locking and idempotent writes, on real temporary files."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from shadow.core.errors import StoreError
from shadow.core.models import Comparison, DeadLetter, Outcome, RecordKind
from shadow.store.database import Store
from shadow.store.migrations import MIGRATIONS
from shadow.store.writes import Duplicate, WriteBatch
from tests.store.old_stores import migrate_up_to

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
NEWEST = max(version for version, _ in MIGRATIONS)


def versions(path: Path) -> list[int]:
    with Store(path, read_only=True) as store:
        return [r[0] for r in store.db.execute(
            "SELECT version FROM schema_version ORDER BY version").fetchall()]


def dead_letter(position: str, reason: str = "not valid JSON", source: str = "events.jsonl"
                ) -> DeadLetter:
    return DeadLetter(kind=RecordKind.EVENT, source=source, position=position,
                      raw="{oops", reason=reason, received_at=NOW)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "shadow.duckdb"


@pytest.fixture
def store(store_path: Path) -> Iterator[Store]:
    with Store(store_path) as opened:
        yield opened


def make_newer(path: Path) -> None:
    with Store(path) as store:
        store.db.execute("INSERT INTO schema_version (version) VALUES (?)", [NEWEST + 1])


# -- migrations ---------------------------------------------------------------------


def test_a_fresh_store_is_at_the_newest_migration(store_path: Path) -> None:
    with Store(store_path):
        pass
    assert versions(store_path) == [version for version, _ in MIGRATIONS]
    assert versions(store_path)[-1] == NEWEST


def test_reopening_a_store_applies_no_migration_twice(store_path: Path) -> None:
    with Store(store_path) as store:
        store.write(WriteBatch(dead_letters=[dead_letter("line 1")]))
    for _ in range(2):
        with Store(store_path) as store:
            assert store.count("dead_letters") == 1
    assert versions(store_path) == [version for version, _ in MIGRATIONS]


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_a_store_newer_than_the_code_is_refused(store_path: Path, read_only: bool) -> None:
    make_newer(store_path)

    with pytest.raises(StoreError) as refused:
        Store(store_path, read_only=read_only).open()

    message = str(refused.value)
    assert f"schema version {NEWEST + 1}" in message
    assert str(NEWEST) in message and "newer" in message and "upgrade" in message
    assert not isinstance(refused.value, duckdb.Error)


def test_a_refused_store_does_not_keep_the_file_open(store_path: Path) -> None:
    make_newer(store_path)
    refused = Store(store_path)
    with pytest.raises(StoreError):
        refused.open()

    # A failed open must leave nothing behind: another process (or this one, with
    # another configuration) can open the file again.
    probe = subprocess.run(
        [sys.executable, "-c",
         "import duckdb, sys; duckdb.connect(sys.argv[1], read_only=True).close()",
         str(store_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert probe.returncode == 0, probe.stderr.strip().splitlines()[-1:]


# -- locking ------------------------------------------------------------------------

_HOLD_OPEN = """
import sys, time
from shadow.store.database import Store
store = Store(sys.argv[1])
store.open()
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
def test_a_store_locked_by_another_process_gives_store_error(
    store_path: Path, read_only: bool
) -> None:
    with Store(store_path):
        pass  # create it, so that read-only opening has a file to find
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_OPEN, str(store_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "ready"

            with pytest.raises(StoreError) as locked:
                Store(store_path, read_only=read_only).open()
        finally:
            holder.kill()
            holder.communicate(timeout=30)

    assert not isinstance(locked.value, duckdb.Error)
    assert isinstance(locked.value.__cause__, duckdb.Error)
    assert str(store_path) in str(locked.value)
    assert "lock" in str(locked.value).lower()


# -- idempotent writes ----------------------------------------------------------------


def test_dead_letters_at_the_same_source_position_are_stored_once(store: Store) -> None:
    first = store.write(WriteBatch(dead_letters=[
        dead_letter("line 3"), dead_letter("line 3", reason="read twice in one batch"),
        dead_letter("line 4"), dead_letter("line 3", source="other.jsonl"),
    ]))
    second = store.write(WriteBatch(dead_letters=[dead_letter("line 3"), dead_letter("line 4")]))

    assert (first.dead_letters, second.dead_letters) == (3, 0)
    stored = store.db.execute(
        "SELECT source, position, count(*) FROM dead_letters GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert stored == [("events.jsonl", "line 3", 1), ("events.jsonl", "line 4", 1),
                      ("other.jsonl", "line 3", 1)]


def test_duplicates_at_the_same_source_position_are_stored_once(store: Store) -> None:
    first = store.write(WriteBatch(duplicates=[
        Duplicate("E1", "events.jsonl", "line 9"), Duplicate("E1", "events.jsonl", "line 9"),
        Duplicate("E1", "events.jsonl", "line 12"),
    ]))
    second = store.write(WriteBatch(duplicates=[Duplicate("E1", "events.jsonl", "line 9")]))

    assert (first.duplicates, second.duplicates) == (2, 0)
    stored = store.db.execute(
        "SELECT event_id, position FROM duplicates ORDER BY position").fetchall()
    assert stored == [("E1", "line 12"), ("E1", "line 9")]


def test_outcomes_with_the_same_key_and_decided_at_are_stored_once(store: Store) -> None:
    at = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    same_instant = at.astimezone(timezone(timedelta(hours=2)))
    rows = [
        (Outcome(key="K1", outcome="bug", decided_at=at), "outcomes.jsonl", "line 1"),
        (Outcome(key="K1", outcome="bug", decided_at=same_instant), "outcomes.jsonl", "line 2"),
        (Outcome(key="K1", outcome="login", decided_at=at + timedelta(minutes=1)),
         "outcomes.jsonl", "line 3"),
        (Outcome(key="K2", outcome="bug", decided_at=at), "outcomes.jsonl", "line 4"),
    ]

    first = store.write(WriteBatch(outcomes=rows))
    second = store.write(WriteBatch(outcomes=rows[:2]))

    assert (first.outcomes, second.outcomes) == (3, 0)
    stored = store.db.execute(
        "SELECT key, decided_at, count(*) FROM outcomes GROUP BY ALL ORDER BY ALL").fetchall()
    assert stored == [("K1", at, 1), ("K1", at + timedelta(minutes=1), 1), ("K2", at, 1)]


def make_version_1_store(path: Path) -> None:
    db = duckdb.connect(str(path))
    migrate_up_to(db, 1)
    db.execute(
        "INSERT INTO predictions (event_id, candidate, mode, output, latency_ms, error_type, "
        "error_message, predicted_at) VALUES "
        "('e1', 'c', 'shadow', NULL, 1.0, 'ValueError', 'boom', now()), "
        "('e2', 'c', 'shadow', NULL, 1.0, 'NotJSONSerializable', 'set', now()), "
        "('e3', 'c', 'shadow', '\"ok\"', 1.0, NULL, NULL, now())"
    )
    db.close()


def test_a_version_1_store_is_migrated_and_its_error_kinds_filled_in(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    make_version_1_store(path)

    with Store(path) as store:
        version = store.db.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
        kinds = store.db.execute(
            "SELECT event_id, error_kind, attempts FROM predictions ORDER BY event_id"
        ).fetchall()

    assert version == MIGRATIONS[-1][0]
    assert kinds == [("e1", "exception", 1), ("e2", "not_json", 1), ("e3", None, 1)]


def test_a_reader_of_an_older_store_upgrades_it_first(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    make_version_1_store(path)

    with Store(path, read_only=True) as store:
        abstained = store.db.execute(
            "SELECT count(*) FILTER (WHERE abstained) FROM predictions"
        ).fetchall()[0][0]
        version = store.db.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]

    assert (abstained, version) == (0, MIGRATIONS[-1][0])


def make_version_5_store(path: Path) -> None:
    """A store as the release before comparison notes left it, with one comparison."""
    db = duckdb.connect(str(path))
    migrate_up_to(db, 5)
    db.execute(
        "INSERT INTO comparisons (event_id, candidate, version, comparator, agree, "
        "outcome_decided_at, compared_at) VALUES ('e1', 'c', '1', 'exact:x', true, ?, ?)",
        [NOW, NOW])
    db.close()


def test_a_version_5_store_gains_comparison_notes_and_keeps_its_comparisons(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v5.duckdb"
    make_version_5_store(path)

    with Store(path) as store:
        before = store.db.execute(
            "SELECT event_id, agree, note FROM comparisons").fetchall()
        store.write_comparisons([Comparison(
            event_id="e2", candidate="c", version="1", comparator="similarity:x",
            agree=False, note="f1=0.250", outcome_decided_at=NOW, compared_at=NOW)])
        after = store.db.execute(
            "SELECT event_id, agree, note FROM comparisons ORDER BY event_id").fetchall()

    assert before == [("e1", True, None)]
    assert after == [("e1", True, None), ("e2", False, "f1=0.250")]
    assert versions(path) == [version for version, _ in MIGRATIONS]


def test_a_comparison_without_a_note_is_stored_with_null(store: Store) -> None:
    store.write_comparisons([Comparison(
        event_id="e1", candidate="c", comparator="exact:x", agree=True,
        outcome_decided_at=NOW, compared_at=NOW)])
    assert store.db.execute("SELECT note FROM comparisons").fetchall() == [(None,)]
