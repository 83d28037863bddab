"""The audit trail names the API token of each command beside the actor it claimed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb

from rollout import audit
from rollout.controller import Controller
from rollout.state import Action
from shadow.store.database import Store
from shadow.store.migrations import MIGRATIONS
from tests.rollout.test_state import PLAN, ticking
from tests.store.old_stores import migrate_up_to

AT = datetime(2026, 1, 5, tzinfo=UTC)


def make_version_8_store(path: Path) -> None:
    """A store as the release before token names left it: a start and a person's promote."""
    db = duckdb.connect(str(path))
    migrate_up_to(db, 8)
    db.execute(
        "INSERT INTO rollout_audit VALUES "
        "('triage', 1, ?, 'controller', 'start', NULL, 0, NULL, 'progressing', 0.0, "
        "'rollout configured', NULL), "
        "('triage', 2, ?, 'dana', 'promote', 0, 1, 'progressing', 'progressing', 5.0, "
        "'owner approved', NULL)", [AT, AT])
    db.close()


def test_commands_recorded_before_token_names_are_not_taken_for_local_ones(
        tmp_path: Path) -> None:
    path = tmp_path / "v8.duckdb"
    make_version_8_store(path)
    with Store(path) as store:
        records = audit.history(store, "triage")
        version = store.db.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    # Migrated to the latest version, through 9, which added the token column.
    assert version == MIGRATIONS[-1][0] >= 9
    assert [(r.actor, r.token) for r in records] == [("controller", None), ("dana", "")]
    assert [audit.credited(r.actor, r.token) for r in records] == [
        "controller", "dana (claimed, token not recorded)"]


def test_a_command_keeps_its_token_s_name_and_one_without_a_token_is_local(
        tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, PLAN, rollout="triage", candidate="triage",
                                version="1", comparator="exact", now=ticking())
        controller.sync()
        promoted = controller.command(Action.PROMOTE, actor="ana@example.com", reason="go",
                                      force=True, token="oncall")
        paused = controller.command(Action.PAUSE, actor="dana", reason="look")
        records = audit.history(store, "triage")
    assert (promoted.token, paused.token) == ("oncall", None)
    assert [(r.action, r.actor, r.token) for r in records] == [
        (Action.START, "controller", None), (Action.PROMOTE, "ana@example.com", "oncall"),
        (Action.PAUSE, "dana", None)]
    assert records[1].as_dict()["token"] == "oncall"
    assert [audit.credited(r.actor, r.token) for r in records] == [
        "controller", "ana@example.com (claimed, token oncall)", "dana (claimed, local)"]
