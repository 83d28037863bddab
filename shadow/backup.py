"""A consistent copy of the store, taken while it is in use.

The copy is a DuckDB file of its own, a store like any other: ``shadow report
--db COPY`` reads it, and restoring is putting it in the store's place while
no daemon runs. It is taken by the store's writer (the daemon's pipeline
thread, between two batches, or the command that opened the file), so
nothing is written while it is made and it holds every table as of one
moment. The write-ahead log is first folded into the file, then the file
(and what is left of the log) is copied byte for byte: at disk speed, where
re-inserting every row through SQL took a hundred times longer. The copy is
written next to its target under a hidden ``.partial`` name, opened, counted
table by table against the store, and only then renamed into place: a file
at the target is always a complete copy.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import structlog

from shadow.disk import fsync
from shadow.errors import ConfigError, StoreError, first_line
from shadow.models import utc_now
from shadow.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Backup:
    """What a backup wrote."""

    path: Path
    rows: dict[str, int]
    """Rows per table, the same in the copy as in the store when it was taken."""
    size_bytes: int
    seconds: float
    taken_at: datetime
    """When the copy was taken: what the store received later is not in it."""

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows": dict(self.rows), "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 3), "taken_at": self.taken_at.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Backup:
        return cls(Path(data["path"]), {str(k): int(v) for k, v in data["rows"].items()},
                   int(data["size_bytes"]), float(data["seconds"]),
                   datetime.fromisoformat(data["taken_at"]))


def backup(store: Store, target: Path, *, now: Callable[[], datetime] = utc_now) -> Backup:
    """Copy ``store`` to the new file ``target`` (absolute, in an existing directory).

    Call it on the thread that writes the store: a write during the copy would
    make a copy of no single moment (the check against the counts catches most).

    Raises:
        ConfigError: ``target`` is relative, exists, or its directory does not.
        StoreError: the copy could not be written or does not hold what the
            store held; nothing is left at ``target``.
    """
    started = time.monotonic()
    _check_target(target)
    partial = target.with_name(f".{target.name}.partial")
    _remove(partial)
    db = store.db
    try:
        rows = _digest(db)
    except duckdb.Error as exc:
        raise StoreError(f"backup to {target} refused: the store cannot be read in full, so "
                         f"it may be damaged ({first_line(exc)}); earlier backups are kept"
                         ) from exc
    try:
        taken_at = now()
        if not store.read_only:
            _fold_log(db)
        shutil.copyfile(store.path, partial)
        if _log(store.path).exists():
            shutil.copyfile(_log(store.path), _log(partial))
        copied = _settle(partial)
    except (duckdb.Error, OSError, StoreError) as exc:
        _remove(partial)
        raise StoreError(f"backup to {target} failed: {exc}") from exc
    if copied != rows:
        _remove(partial)
        differ = sorted(t for t in rows.keys() | copied.keys() if rows.get(t) != copied.get(t))
        raise StoreError(f"backup to {target} failed: the copy differs in {', '.join(differ)}")
    fsync(partial)
    if target.exists():  # appeared while the copy was written
        _remove(partial)
        raise ConfigError(f"backup target {target} exists now; choose a new file name")
    os.replace(partial, target)
    fsync(target.parent)
    counts = {table: count for table, (count, _) in rows.items()}
    made = Backup(target, counts, target.stat().st_size, time.monotonic() - started, taken_at)
    log.info("store backed up", path=str(target), seconds=round(made.seconds, 3),
             size_bytes=made.size_bytes)
    return made


def _fold_log(db: duckdb.DuckDBPyConnection) -> None:
    """Checkpoint, so that the file alone is the store."""
    try:
        db.execute("CHECKPOINT")
    except duckdb.TransactionException:
        pass  # a reader's transaction is open: the log is copied along with the file


def _settle(copy: Path) -> dict[str, tuple[int, int]]:
    """Open the copy (replaying a copied log into it), fold the log in, read it in full."""
    with duckdb.connect(str(copy)) as db:
        db.execute("CHECKPOINT")
        rows = _digest(db)
    if _log(copy).exists():
        raise StoreError(f"the copy's write-ahead log {_log(copy)} was not folded in")
    return rows


def _log(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def backup_in_turn(store: Store, directory: Path, keep: int, at: datetime) -> Backup:
    """A backup named by its time in ``directory``, keeping the newest ``keep`` of them.

    Only files named like this job's backups of this store are ever deleted.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = store.path.stem
    stamp = f"{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z"
    made = backup(store, directory.absolute() / f"{stem}-{stamp}.duckdb", now=lambda: at)
    name = re.compile(re.escape(stem) + r"-\d{8}T\d{6}\.\d{3}Z\.duckdb")
    ours = sorted(p for p in directory.iterdir() if name.fullmatch(p.name))
    for old in ours[:-keep]:
        old.unlink()
        log.info("old backup deleted", path=str(old))
    return made


def _check_target(target: Path) -> None:
    if not target.is_absolute():
        raise ConfigError(f"backup target {target}: expected an absolute path")
    if target.exists():
        raise ConfigError(f"backup target {target} exists; choose a new file name "
                          "(a backup never overwrites)")
    if not target.parent.is_dir():
        raise ConfigError(f"backup target {target}: the directory {target.parent} does not exist")


def _digest(db: duckdb.DuckDBPyConnection) -> dict[str, tuple[int, int]]:
    """Rows and a checksum of every row's every column, per table.

    Hashing every column reads every block of every table, and DuckDB checks each
    block's checksum as it reads it: a damaged file fails here, not when the
    backup is needed. The checksum (the XOR of the rows' hashes, whatever their
    order) makes a copy that differs from the store in content fail too.
    """
    tables = [name for (name,) in db.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' ORDER BY table_name").fetchall()]
    found = {}
    for table in tables:
        count, checksum = db.execute(
            f"SELECT count(*), coalesce(bit_xor(hash(t)), 0) FROM main.{_identifier(table)} t"
        ).fetchall()[0]
        found[table] = (int(count), int(checksum))
    return found



def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _remove(path: Path) -> None:
    for leftover in (path, _log(path)):
        leftover.unlink(missing_ok=True)
