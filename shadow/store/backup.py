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
at the target is always a complete copy. A copy holds what the store holds,
personal data included, so it is readable by its owner only (mode 0600), and
a folder made for backups by its owner only (0700).

Through the control API a backup is only ever written into the daemon's
backup folder (``daemon.jobs.backup_dir``), under a plain file name
(:func:`backup_named`); the command line without a daemon writes where its
user says (:func:`backup`).
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

from shadow.core.disk import fsync
from shadow.core.errors import ConfigError, StoreError, first_line
from shadow.core.models import utc_now
from shadow.store.database import Store

log = structlog.get_logger(__name__)

NAME_MAX = 200


class BackupExists(ConfigError):
    """The backup's target exists; a backup never overwrites a file."""


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
        ConfigError: ``target`` is relative, or its directory does not exist.
        BackupExists: ``target`` exists.
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
        _private(partial)
        shutil.copyfile(store.path, partial)  # keeps the private file's mode
        if _log(store.path).exists():
            _private(_log(partial))
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
    if os.path.lexists(target):  # appeared while the copy was written
        _remove(partial)
        raise BackupExists(f"backup target {target} exists now; choose a new file name")
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
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = store.path.stem
    stamp = f"{at:%Y%m%dT%H%M%S}.{at.microsecond // 1000:03d}Z"
    made = backup(store, directory.absolute() / f"{stem}-{stamp}.duckdb", now=lambda: at)
    name = re.compile(re.escape(stem) + r"-\d{8}T\d{6}\.\d{3}Z\.duckdb")
    ours = sorted(p for p in directory.iterdir() if name.fullmatch(p.name))
    for old in ours[:-keep]:
        old.unlink()
        log.info("old backup deleted", path=str(old))
    return made


def backup_named(store: Store, directory: Path, name: str, *,
                 now: Callable[[], datetime] = utc_now) -> Backup:
    """Copy ``store`` to the new file ``name`` inside ``directory``, made if missing.

    Raises:
        ConfigError: ``name`` is not a plain file name (:func:`check_name`).
        BackupExists: ``directory`` has a file of that name.
        StoreError: as :func:`backup`.
    """
    check_name(name, str(directory))
    directory = directory.absolute()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / name
    if target.parent != directory:  # check_name makes this impossible; a copy must not escape
        raise ConfigError(f"backup name {name!r}: not a file name inside {directory}")
    return backup(store, target, now=now)


def check_name(name: str, folder: str) -> None:
    """Refuse anything but a plain file name for a backup in ``folder`` (named in messages).

    Raises:
        ConfigError: the name is empty, too long, a path (absolute, with a
            separator, with ``..``), hidden (starts with ``.``, as the
            backups' own partial files do), or has control characters.
    """
    where = f"backups are written into {folder} (daemon.jobs.backup_dir); give a file name"
    if not name.strip():
        raise ConfigError(f"backup name: required; {where}")
    shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "…"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise ConfigError(f"backup name {shown}: not valid Unicode text") from None
    if size > NAME_MAX:  # file systems count bytes, and the partial copy's name is longer
        raise ConfigError(f"backup name {shown}: longer than {NAME_MAX} bytes")
    if name.startswith(("/", "\\", "~")) or (len(name) > 1 and name[1] == ":"):
        raise ConfigError(f"backup name {shown} is an absolute path; {where}")
    if "/" in name or "\\" in name:
        raise ConfigError(f"backup name {shown} has a path separator; {where}")
    if ".." in name:
        raise ConfigError(f"backup name {shown} has '..'; {where}")
    if name.startswith("."):
        raise ConfigError(f"backup name {shown} starts with '.'; hidden names are refused")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(f"backup name {shown} has control characters")


def _private(path: Path) -> None:
    """Make the empty file ``path``, readable and writable by its owner only."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _check_target(target: Path) -> None:
    if not target.is_absolute():
        raise ConfigError(f"backup target {target}: expected an absolute path")
    if os.path.lexists(target):
        raise BackupExists(f"backup target {target} exists; choose a new file name "
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
            f"SELECT count(*), coalesce(bit_xor(hash(t)), 0) FROM main.{_identifier(table)} t"  # noqa: S608
        ).fetchall()[0]
        found[table] = (int(count), int(checksum))
    return found



def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _remove(path: Path) -> None:
    for leftover in (path, _log(path)):
        leftover.unlink(missing_ok=True)
