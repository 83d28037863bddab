"""What one pipeline batch writes, and the Arrow tables and inserts that write it.

A :class:`WriteBatch` holds everything one transaction of :meth:`Store.write
<shadow.store.database.Store.write>` adds. :func:`arrow_tables` turns it into one Arrow
table per store table (columnar inserts are two orders of magnitude faster
than row-by-row INSERTs in DuckDB), and :func:`insert` writes them with the
store's idempotency checks for rows that may repeat across replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shadow.core.models import DeadLetter, Event, Outcome, Prediction

UTC_TIMESTAMP = pa.timestamp("us", tz="UTC")


class StoredEvent(NamedTuple):
    """An event with where it was read, so re-reading the same record is recognised.

    A named tuple, like :class:`~connectors.base.RawRecord`: one per event stored.
    """

    event: Event
    source: str
    position: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A record whose ``event_id`` was already stored from another position."""

    event_id: str
    source: str
    position: str


@dataclass(slots=True)
class WriteBatch:
    """Everything one transaction writes. Lists may be empty."""

    events: list[StoredEvent] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    outcomes: list[tuple[Outcome, str, str]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """What a write actually added, after idempotency checks."""

    outcomes: int
    dead_letters: int
    duplicates: int


def arrow_tables(batch: WriteBatch) -> dict[str, pa.Table]:
    tables: dict[str, pa.Table] = {}
    if batch.events:
        tables["events"] = _events_table(batch.events)
    if batch.predictions:
        tables["predictions"] = predictions_table(batch.predictions)
    if batch.outcomes:
        tables["outcomes"] = _outcomes_table(batch.outcomes)
    if batch.dead_letters:
        tables["dead_letters"] = _dead_letters_table(batch.dead_letters)
    if batch.duplicates:
        tables["duplicates"] = pa.table({
            "event_id": [d.event_id for d in batch.duplicates],
            "source": [d.source for d in batch.duplicates],
            "position": [d.position for d in batch.duplicates],
        })
    return tables


def _events_table(rows: list[StoredEvent]) -> pa.Table:
    dumps = orjson.dumps
    events = [row.event for row in rows]
    return pa.table({
        "event_id": [e.event_id for e in events],
        "key": [e.key for e in events],
        "routing_key": [e.route for e in events],
        "occurred_at": pa.array([e.occurred_at for e in events], UTC_TIMESTAMP),
        "segment": [dumps(e.segment).decode() for e in events],
        "payload": [dumps(e.payload).decode() for e in events],
        "source": [row.source for row in rows],
        "position": [row.position for row in rows],
    })


def predictions_table(predictions: list[Prediction]) -> pa.Table:
    dumps = orjson.dumps
    return pa.table({
        "event_id": [p.event_id for p in predictions],
        "candidate": [p.candidate for p in predictions],
        "version": pa.array([p.version for p in predictions], pa.string()),
        "mode": [p.mode.value for p in predictions],
        "output": pa.array(
            [dumps(p.output).decode() if p.error is None else None for p in predictions],
            pa.string(),
        ),
        "confidence": pa.array([p.confidence for p in predictions], pa.float64()),
        "abstained": pa.array([p.abstained for p in predictions], pa.bool_()),
        "latency_ms": pa.array([p.latency_ms for p in predictions], pa.float64()),
        "error_type": pa.array([p.error and p.error.type for p in predictions], pa.string()),
        "error_message": pa.array([p.error and p.error.message for p in predictions], pa.string()),
        "error_kind": pa.array(
            [p.error and p.error.kind.value for p in predictions], pa.string()
        ),
        "error_body": pa.array([p.error and p.error.body for p in predictions], pa.string()),
        "predicted_at": pa.array([p.predicted_at for p in predictions], UTC_TIMESTAMP),
        "status": pa.array([p.status for p in predictions], pa.int32()),
        "attempts": pa.array([p.attempts for p in predictions], pa.int32()),
        "ttfb_ms": pa.array([p.ttfb_ms for p in predictions], pa.float64()),
        "prompt_tokens": pa.array([p.prompt_tokens for p in predictions], pa.int64()),
        "completion_tokens": pa.array([p.completion_tokens for p in predictions], pa.int64()),
        "cost": pa.array([p.cost for p in predictions], pa.float64()),
        "model": pa.array([p.model for p in predictions], pa.string()),
        "review": pa.array([p.review for p in predictions], pa.bool_()),
        "rollout_step": pa.array([p.step for p in predictions], pa.int32()),
        "violations": pa.array([list(p.violations) if p.violations else None
                                for p in predictions], pa.list_(pa.string())),
    })


def _outcomes_table(rows: list[tuple[Outcome, str, str]]) -> pa.Table:
    return pa.table({
        "key": [o.key for o, _, _ in rows],
        "decided_at": pa.array([o.decided_at for o, _, _ in rows], UTC_TIMESTAMP),
        "outcome": [orjson.dumps(o.outcome).decode() for o, _, _ in rows],
        "actor": pa.array([o.actor for o, _, _ in rows], pa.string()),
        "source": [source for _, source, _ in rows],
        "position": [position for _, _, position in rows],
    })


def _dead_letters_table(rows: list[DeadLetter]) -> pa.Table:
    return pa.table({
        "kind": [d.kind.value for d in rows],
        "source": [d.source for d in rows],
        "position": [d.position for d in rows],
        "raw": [d.raw for d in rows],
        "reason": [d.reason for d in rows],
        "received_at": pa.array([d.received_at for d in rows], UTC_TIMESTAMP),
    })


# Tables whose rows may repeat across replays, and the columns that identify a row.
_IDENTITY = {
    "outcomes": ("key", "decided_at"),
    "dead_letters": ("source", "position"),
    "duplicates": ("source", "position"),
}


# The long form of segments, for slicing in SQL; unnested by DuckDB, which is
# cheaper than a nested Python loop per event.
_SEGMENTS_SQL = """
INSERT INTO event_segments
SELECT n.event_id, s.key, s.value ->> '$' FROM new_rows n, json_each(n.segment) s
"""


def _any_segment(events: pa.Table) -> bool:
    """Whether some event has a segment (a statement fewer per batch when none has)."""
    return bool(pc.any(pc.not_equal(events["segment"], "{}")).as_py())


def insert(db: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table]) -> WriteCounts:
    """Insert each table's rows into the table of that name, in ``db``'s transaction.

    The SQL reads the rows as ``new_rows``, the local variable DuckDB's replacement
    scan finds by name: registering each table as a view (and dropping it) cost a
    millisecond per table, in every batch a webhook delivery waits for.
    """
    added = dict.fromkeys(_IDENTITY, 0)
    for table, new_rows in tables.items():
        if table == "events" and _any_segment(new_rows):
            db.execute(_SEGMENTS_SQL)
        identity = _IDENTITY.get(table)
        if identity is None:
            db.execute(f"INSERT INTO {table} BY NAME SELECT * FROM new_rows")  # noqa: S608
            continue
        on = " AND ".join(f"t.{c} = n.{c}" for c in identity)
        partition = ", ".join(identity)
        # An INSERT answers with one row, the count of rows it added.
        ((count,),) = db.execute(
            f"INSERT INTO {table} BY NAME "  # noqa: S608
            f"SELECT * EXCLUDE (rank) FROM ("
            f"  SELECT n.*, row_number() OVER (PARTITION BY {partition}) AS rank"
            f"  FROM new_rows n ANTI JOIN {table} t ON {on}"
            f") WHERE rank = 1",
        ).fetchall()
        added[table] = int(count)
    return WriteCounts(added["outcomes"], added["dead_letters"], added["duplicates"])
