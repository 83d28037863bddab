"""Settings kept with the store: one JSON value per name, the last one kept wins."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import duckdb

from shadow.store.database import Store
from shadow.store.migrations import MIGRATIONS, migrate

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_a_setting_is_read_back_and_replaced(tmp_path: Path) -> None:
    with Store(tmp_path / "s.duckdb") as store:
        assert store.setting("readiness") is None
        store.save_setting("readiness", '{"report": {"threshold": 0.5}}', now=NOW)
        store.save_setting("readiness", '{"report": {"threshold": 0.7}}', now=NOW)
    with Store(tmp_path / "s.duckdb", read_only=True) as store:
        assert store.setting("readiness") == '{"report": {"threshold": 0.7}}'
        assert store.count("settings") == 1


def test_a_store_from_before_settings_gets_the_table_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as db:
        db.execute("CREATE TABLE schema_version "
                   "(version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        older = [m for m in MIGRATIONS if m[0] < 10]
        for version, statements in older:
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
        assert migrate(db) == MIGRATIONS[-1][0]
    with Store(path, read_only=True) as store:
        assert store.setting("readiness") is None
