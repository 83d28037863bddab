"""The DuckDB store: events, outcomes with history, predictions, their actions, comparisons,
dead letters.

Writes are batched: each :meth:`Store.write` turns a batch into Arrow tables
and inserts them in one transaction (:mod:`shadow.store.writes`); the schema comes
from :mod:`shadow.store.migrations`. Idempotency is enforced here, not by the
caller: an event is stored once per ``event_id``, a prediction once per event
and candidate, an outcome once per ``key`` and ``decided_at`` (the actions of each with
it), a dead letter or a duplicate once per source position. Only one process can hold the file open
for writing (DuckDB locks it), which makes these checks race-free.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from shadow.core.errors import StoreError, first_line
from shadow.core.models import Comparison, Event, Prediction
from shadow.store.migrations import MIGRATIONS, check_version, migrate
from shadow.store.requests import requests_table
from shadow.store.tool_calls import tool_calls_table
from shadow.store.writes import (
    UTC_TIMESTAMP,
    WriteBatch,
    WriteCounts,
    arrow_tables,
    gathered,
    insert,
    prediction_actions_table,
    predictions_table,
)

_SETTINGS = {
    "TimeZone": "UTC",
    # DuckDB's default buffer pool is 80 % of the machine's memory; a store that
    # runs beside production must stay small. Larger work spills to disk.
    "memory_limit": "512MB",
    # Checkpointing after every 16 MB of WAL (the default) rewrote the file
    # dozens of times per million events; 128 MB keeps replays fast and recovery short.
    "checkpoint_threshold": "128MB",
}


_FEW_IDS = 1_000
"""Up to this many ids are looked up as a list parameter, more as a registered table."""


@dataclass(frozen=True, slots=True)
class PendingComparison:
    """A prediction whose final outcome it has not yet been compared with."""

    event_id: str
    candidate: str
    version: str | None
    output: Any
    outcome: Any
    decided_at: datetime


class StoreState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class Store:
    """One DuckDB file. Open it with ``with Store(path) as store:``."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._state = StoreState.NEW
        self._db: duckdb.DuckDBPyConnection | None = None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Open the file (creating it unless read-only) and apply pending migrations.

        Raises:
            StoreError: the file is locked by another process, is not a DuckDB
                file, or was written by a newer version of this tool.
        """
        if self._state is not StoreState.NEW:
            raise StoreError(f"cannot open store {self.path}: it is {self._state.value}")
        if self.read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}")
        if self.path.is_file() and self.path.stat().st_size > 0 and not _is_duckdb(self.path):
            raise StoreError(f"cannot open store {self.path}: not a DuckDB file")
        if self.read_only:
            self._upgrade()
        try:
            self._db = duckdb.connect(str(self.path), read_only=self.read_only)
        except duckdb.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {first_line(exc)}") from exc
        try:
            for setting, value in _SETTINGS.items():
                self._db.execute(f"SET {setting} = '{value}'")
            if not self.read_only:
                migrate(self._db)
            else:
                check_version(self._db)
        except (duckdb.Error, StoreError) as exc:
            # A refused store must not stay locked by this process.
            self._db.close()
            self._db = None
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open store {self.path}: {first_line(exc)}") from exc
        self._state = StoreState.OPEN

    def _upgrade(self) -> None:
        """Migrate an older store before reading it: readers need the current schema.

        When another process holds the file it is the writer, which migrated on open.
        """
        try:
            with duckdb.connect(str(self.path), read_only=True) as db:
                current = check_version(db)
        except duckdb.Error:
            return  # locked by a writer, or unreadable: the read-only open will say
        if current >= MIGRATIONS[-1][0]:
            return
        try:
            with duckdb.connect(str(self.path)) as db:
                migrate(db)
        except duckdb.Error as exc:
            raise StoreError(
                f"cannot open store {self.path}: it needs an upgrade to schema version "
                f"{MIGRATIONS[-1][0]} and cannot be written now: {first_line(exc)}"
            ) from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._state = StoreState.CLOSED

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        """The connection, for read queries by reports. Writes go through methods."""
        if self._db is None:
            raise StoreError(f"store {self.path} is {self._state.value}, not open")
        return self._db

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own, for another thread; same database, same transactions rules."""
        cursor = self.db.cursor()
        cursor.execute("SET TimeZone = 'UTC'")  # per connection; the others are per database
        return cursor

    # -- reads ---------------------------------------------------------------

    def count(self, table: str) -> int:
        return int(_scalar(self.db, f"SELECT count(*) FROM {table}"))  # noqa: S608

    def stored_positions(self, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """For the given ids that are already stored: where each was first read."""
        rows = self._for_ids(
            event_ids,
            "SELECT e.event_id, e.source, e.position FROM events e "
            "SEMI JOIN requested_ids USING (event_id)",
        )
        return {event_id: (source, position) for event_id, source, position in rows}

    def predicted(self, event_ids: Sequence[str], candidate: str, version: str | None) -> set[str]:
        """The given ids that already have a prediction from this candidate version."""
        rows = self._for_ids(
            event_ids,
            "SELECT p.event_id FROM predictions p SEMI JOIN requested_ids USING (event_id) "
            "WHERE p.candidate = ? AND p.version IS NOT DISTINCT FROM ?",
            [candidate, version],
        )
        return {row[0] for row in rows}

    def mark_published(self, published: Sequence[tuple[str, str, str | None, datetime]]) -> None:
        """Record when live decisions, as ``(event_id, candidate, version, at)``, were
        published to the action sink; a decision marked already keeps its time."""
        if not published:
            return
        rows = pa.table({
            "event_id": [r[0] for r in published], "candidate": [r[1] for r in published],
            "version": pa.array([r[2] for r in published], pa.string()),
            "at": pa.array([r[3] for r in published], pa.timestamp("us", tz="UTC")),
        })
        with self._transaction({"published_rows": rows}) as tx:
            tx.execute(
                "UPDATE predictions p SET published_at = r.at FROM published_rows r "
                "WHERE p.event_id = r.event_id AND p.candidate = r.candidate "
                "AND p.version IS NOT DISTINCT FROM r.version AND p.published_at IS NULL")

    def errored(self, candidate: str, version: str | None) -> list[str]:
        """Ids of the events whose prediction by this candidate version is an error."""
        rows = self.db.execute(
            "SELECT event_id FROM predictions WHERE candidate = ? "
            "AND version IS NOT DISTINCT FROM ? AND error_type IS NOT NULL ORDER BY event_id",
            [candidate, version],
        ).fetchall()
        return [row[0] for row in rows]

    def replace_predictions(self, predictions: Sequence[Prediction]) -> None:
        """Put these predictions in place of the ones stored for the same event and candidate."""
        if not predictions:
            return
        new = {"new_predictions": predictions_table(list(predictions)),
               "new_actions": prediction_actions_table(list(predictions)),
               "new_tool_calls": tool_calls_table(list(predictions)),
               "new_requests": requests_table(list(predictions))}
        with self._transaction(new) as tx:
            tx.execute(_DELETE_SAME.format(table="predictions", new="new_predictions"))
            tx.execute(_DELETE_SAME.format(table="actions", new="new_predictions")
                       + " AND t.side = 'prediction'")
            tx.execute("INSERT INTO predictions BY NAME SELECT * FROM new_predictions")
            tx.execute("INSERT INTO actions BY NAME SELECT * FROM new_actions")
            tx.execute(_DELETE_SAME.format(table="tool_calls", new="new_predictions"))
            tx.execute("INSERT INTO tool_calls BY NAME SELECT * FROM new_tool_calls")
            tx.execute("INSERT INTO requests BY NAME SELECT n.* FROM new_requests n "
                       "ANTI JOIN requests t USING (request_hash)")

    def events_by_id(self, event_ids: Sequence[str]) -> list[Event]:
        rows = self._for_ids(
            event_ids,
            "SELECT e.event_id, e.key, e.routing_key, e.occurred_at, e.payload, e.segment "
            "FROM events e SEMI JOIN requested_ids USING (event_id)",
        )
        return [
            Event(event_id=r[0], key=r[1], routing_key=r[2], occurred_at=r[3],
                  payload=orjson.loads(r[4]), segment=orjson.loads(r[5]))
            for r in rows
        ]

    def _for_ids(
        self, event_ids: Sequence[str], sql: str, params: Sequence[Any] = ()
    ) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, which joins a table ``requested_ids`` of the given ids.

        A few ids go in as one list parameter (half the time of registering a table,
        which a delivery waiting for its answer notices); many as an Arrow table.
        """
        if not event_ids:
            return []
        if len(event_ids) <= _FEW_IDS:
            return self.db.execute(
                "WITH requested_ids AS (SELECT unnest(?::VARCHAR[]) AS event_id) " + sql,
                [list(event_ids), *params]).fetchall()
        self.db.register("requested_ids", pa.table({"event_id": pa.array(event_ids, pa.string())}))
        try:
            return self.db.execute(sql, list(params)).fetchall()
        finally:
            self.db.unregister("requested_ids")

    def pending_comparisons(
        self, comparator: str, chunk: int = 20_000
    ) -> Iterator[list[PendingComparison]]:
        """Successful predictions not yet compared with the final outcome of their key.

        A prediction is pending again when its key got a later outcome, or when
        the comparator (its configuration fingerprint) changed.
        """
        reader = self.cursor().sql(_PENDING_SQL, params=[comparator]).to_arrow_reader(chunk)
        for batch in reader:
            columns = batch.to_pydict()
            yield [
                PendingComparison(e, c, v, orjson.loads(o), orjson.loads(x), d)
                for e, c, v, o, x, d in zip(
                    columns["event_id"], columns["candidate"], columns["version"],
                    columns["output"], columns["outcome"], columns["decided_at"], strict=True,
                )
            ]

    # -- writes --------------------------------------------------------------

    def write(self, batch: WriteBatch, db: duckdb.DuckDBPyConnection | None = None) -> WriteCounts:
        """Write a batch in one transaction; duplicates of stored rows are skipped.

        Events and predictions are written as given: the caller has already
        checked them against :meth:`stored_positions` and :meth:`predicted`.
        Outcomes, dead letters and duplicates are checked here.
        """
        tables = arrow_tables(batch)
        with self._transaction({}, db) as tx:
            return insert(tx, tables)

    def write_tables(self, batches: Sequence[dict[str, pa.Table]]) -> WriteCounts:
        """Write several batches, each as :func:`~shadow.store.writes.arrow_tables` makes
        its tables, in one transaction, as :meth:`write` writes one."""
        tables = gathered(batches)
        with self._transaction({}) as tx:
            return insert(tx, tables)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction for writes outside the pipeline's batches (the rollout's state).

        Raises:
            StoreError: DuckDB refused; nothing of the transaction was written.
        """
        with self._transaction({}) as tx:
            yield tx

    @contextmanager
    def _transaction(
        self, tables: dict[str, pa.Table], db: duckdb.DuckDBPyConnection | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction with ``tables`` registered under their names for its statements.

        Raises:
            StoreError: DuckDB refused; nothing of the transaction was written.
        """
        db = db or self.db
        try:
            db.execute("BEGIN TRANSACTION")
            for name, table in tables.items():
                db.register(name, table)
            yield db
            db.execute("COMMIT")
        except duckdb.Error as exc:
            _rollback(db)
            raise StoreError(f"cannot write to {self.path}: {first_line(exc)}") from exc
        except BaseException:
            _rollback(db)
            raise
        finally:
            for name in tables:
                db.unregister(name)

    def write_comparisons(self, comparisons: Sequence[Comparison]) -> None:
        """Replace the comparisons of these predictions, in one transaction.

        Each is stored with its ``note`` (``NULL`` when the comparator gave none).
        """
        if not comparisons:
            return
        rows = pa.table({
            "event_id": [c.event_id for c in comparisons],
            "candidate": [c.candidate for c in comparisons],
            "version": pa.array([c.version for c in comparisons], pa.string()),
            "comparator": [c.comparator for c in comparisons],
            "agree": pa.array([c.agree for c in comparisons], pa.bool_()),
            "note": pa.array([c.note for c in comparisons], pa.string()),
            "outcome_decided_at": pa.array([c.outcome_decided_at for c in comparisons],
                                           UTC_TIMESTAMP),
            "compared_at": pa.array([c.compared_at for c in comparisons], UTC_TIMESTAMP),
        })
        fields = pa.table({
            "event_id": [c.event_id for c in comparisons for _ in c.fields],
            "candidate": [c.candidate for c in comparisons for _ in c.fields],
            "version": pa.array([c.version for c in comparisons for _ in c.fields], pa.string()),
            "field": pa.array([f for c in comparisons for f in c.fields], pa.string()),
            "agree": pa.array([a for c in comparisons for a in c.fields.values()], pa.bool_()),
        })
        with self._transaction({"new_comparisons": rows, "new_fields": fields}) as tx:
            for table in ("comparisons", "comparison_fields"):
                tx.execute(_DELETE_SAME.format(table=table, new="new_comparisons"))
            tx.execute("INSERT INTO comparisons BY NAME SELECT * FROM new_comparisons")
            tx.execute("INSERT INTO comparison_fields BY NAME SELECT * FROM new_fields")

    def record_run(self, run: dict[str, Any]) -> None:
        """Keep the summary of one replay, for reports and for people debugging."""
        self.db.execute(
            "INSERT INTO runs (run_id, command, started_at, finished_at, summary) "
            "VALUES (?, ?, ?, ?, ?)",
            [run["run_id"], run["command"], run["started_at"], run["finished_at"],
             orjson.dumps(run["summary"]).decode()],
        )

    def save_setting(self, name: str, value: str, *, now: datetime) -> None:
        """Keep ``value`` (JSON text) under ``name``, in place of what was there."""
        self.db.execute("INSERT OR REPLACE INTO settings (name, value, saved_at) "
                        "VALUES (?, ?, ?)", [name, value, now])

    def setting(self, name: str) -> str | None:
        """The JSON text kept under ``name``, else ``None`` (also in a store opened read-only
        at a schema from before settings were kept)."""
        try:
            value = _scalar(self.db, "SELECT value FROM settings WHERE name = ?", [name])
        except duckdb.CatalogException:
            return None
        return None if value is None else str(value)


# Rows of `table` for the same prediction (event, candidate, version) as a row of `new`.
_DELETE_SAME = """
DELETE FROM {table} t USING {new} n
WHERE t.event_id = n.event_id AND t.candidate = n.candidate
  AND t.version IS NOT DISTINCT FROM n.version
"""

_PENDING_SQL = """
WITH final AS (
    SELECT key, arg_max(outcome, decided_at) AS outcome, max(decided_at) AS decided_at
    FROM outcomes GROUP BY key
)
SELECT p.event_id, p.candidate, p.version, p.output, f.outcome, f.decided_at
FROM predictions p
JOIN events e USING (event_id)
JOIN final f ON f.key = e.key
LEFT JOIN comparisons c
    ON c.event_id = p.event_id AND c.candidate = p.candidate
   AND c.version IS NOT DISTINCT FROM p.version
WHERE p.error_type IS NULL AND NOT p.abstained
  AND (c.event_id IS NULL OR c.outcome_decided_at <> f.decided_at OR c.comparator <> ?)
"""


def _is_duckdb(path: Path) -> bool:
    # DuckDB files carry the magic bytes "DUCK" at offset 8. Checked first because
    # DuckDB's own error for, say, a .jsonl path is about in-memory databases.
    with path.open("rb") as handle:
        return handle.read(12)[8:12] == b"DUCK"


def _scalar(db: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    # fetchall, not fetchone: DuckDB 2 keeps a result open until it is read to
    # the end, and refuses other work on the connection meanwhile.
    rows = db.execute(sql, list(params)).fetchall()
    return rows[0][0] if rows else None


def _rollback(db: duckdb.DuckDBPyConnection) -> None:
    try:
        db.execute("ROLLBACK")
    except duckdb.Error:
        pass  # no transaction was open: the failure came before BEGIN took effect

