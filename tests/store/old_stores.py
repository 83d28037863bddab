"""Stores as an earlier release left them, to test the migrations that follow."""

from __future__ import annotations

from typing import Any

from shadow.store.migrations import MIGRATIONS


def migrate_up_to(db: Any, version: int) -> None:
    """Apply the migrations up to ``version`` on an empty DuckDB connection, recording each
    in ``schema_version`` as the release that reached it did."""
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, "
               "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
    for number, statements in MIGRATIONS:
        if number <= version:
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (?)", [number])
