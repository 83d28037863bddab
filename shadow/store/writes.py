"""What one pipeline batch writes, and the Arrow tables and inserts that write it.

A :class:`WriteBatch` holds everything one transaction of :meth:`Store.write
<shadow.store.database.Store.write>` adds. :func:`arrow_tables` turns it into one Arrow
table per store table (columnar inserts are two orders of magnitude faster
than row-by-row INSERTs in DuckDB), and :func:`insert` writes them with the
store's idempotency checks for rows that may repeat across replays.

The actions of a prediction's output and of an outcome's value
(:func:`shadow.core.actions.actions_of`) are written beside them, one row each, in
the same transaction; an element that is not an action is a row with its ``problem``
and, for a prediction, a violation (:func:`action_violations`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from shadow.core.actions import ACTIONS_KEY, actions_of
from shadow.core.models import DeadLetter, Event, Outcome, Prediction
from shadow.store.requests import hashes, requests_table
from shadow.store.tool_calls import tool_calls_table

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
    events_table: pa.Table | None = None
    """The events as rows of table ``events`` already (the columnar replay builds them
    so); written in place of ``events`` when given."""
    predictions: list[Prediction] = field(default_factory=list)
    outcomes: list[tuple[Outcome, str, str]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    published: dict[tuple[str, str, str | None], datetime] = field(default_factory=dict)
    """Predictions, by event id, candidate and version, already published to the action
    sink (by a candidate worker), with when: stored with that time."""


@dataclass(frozen=True, slots=True)
class WriteCounts:
    """What a write actually added, after idempotency checks."""

    outcomes: int
    dead_letters: int
    duplicates: int


def arrow_tables(batch: WriteBatch) -> dict[str, pa.Table]:
    """One Arrow table per store table the batch adds rows to.

    ``outcome_actions`` comes before ``outcomes``: :func:`insert` keeps the actions of
    an outcome only while the outcome is not yet stored.
    """
    tables: dict[str, pa.Table] = {}
    if batch.events_table is not None and batch.events_table.num_rows:
        tables["events"] = batch.events_table
    elif batch.events:
        tables["events"] = _events_table(batch.events)
    if batch.predictions:
        requests = requests_table(batch.predictions)
        if requests.num_rows:
            tables["requests"] = requests
        tables["predictions"] = predictions_table(batch.predictions)
        if batch.published:
            at = batch.published.get
            tables["predictions"] = tables["predictions"].append_column(
                "published_at", pa.array([at((p.event_id, p.candidate, p.version))
                                          for p in batch.predictions], UTC_TIMESTAMP))
        actions = prediction_actions_table(batch.predictions)
        if actions.num_rows:
            tables["prediction_actions"] = actions
        calls = tool_calls_table(batch.predictions)
        if calls.num_rows:
            tables["tool_calls"] = calls
    if batch.outcomes:
        # The first of an outcome's copies in a batch is the one stored, with its actions.
        outcomes = list({(o.key, o.decided_at): (o, source, position)
                         for o, source, position in reversed(batch.outcomes)}.values())
        outcomes.reverse()
        actions = _outcome_actions_table([o for o, _, _ in outcomes])
        if actions.num_rows:
            tables["outcome_actions"] = actions
        tables["outcomes"] = _outcomes_table(outcomes)
    if batch.dead_letters:
        tables["dead_letters"] = _dead_letters_table(batch.dead_letters)
    if batch.duplicates:
        tables["duplicates"] = pa.table({
            "event_id": [d.event_id for d in batch.duplicates],
            "source": [d.source for d in batch.duplicates],
            "position": [d.position for d in batch.duplicates],
        })
    return tables


_TABLES = ("events", "requests", "predictions", "prediction_actions", "tool_calls",
           "outcome_actions", "outcomes", "dead_letters", "duplicates")
"""The tables :func:`arrow_tables` makes, in its order."""


def gathered(batches: Sequence[dict[str, pa.Table]]) -> dict[str, pa.Table]:
    """The tables of several batches (as :func:`arrow_tables` makes them) as one batch's:
    each table's rows in the batches' order, the tables in :func:`arrow_tables`'s."""
    names = set().union(*batches)
    if not names <= set(_TABLES):
        raise ValueError(f"tables no batch makes: {sorted(names - set(_TABLES))}")
    return {name: pa.concat_tables([b[name] for b in batches if name in b],
                                   promote_options="default")
            for name in _TABLES if name in names}


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
        "violations": pa.array([list(_violations(p)) or None for p in predictions],
                               pa.list_(pa.string())),
        "request_hash": pa.array(hashes(predictions), pa.string()),
    })


ACTIONS_CHECK = "actions:malformed"
"""The check a violation for an element that is not an action names, as in
``actions:malformed actions[1]: tool: expected a non-empty string, got null`` (the
candidates' action checks name it so too)."""

_NAMES_ACTION = re.compile(r"\bactions(?:\[(\d+)\]|\.(\d+)\b)")


def action_violations(output: Any) -> tuple[str, ...]:
    """A violation for each element of the output's ``actions`` that is not an action."""
    return tuple(f"{ACTIONS_CHECK} {problem}" for problem in actions_of(output).problems)


def with_action_violations(predictions: list[Prediction]) -> list[Prediction]:
    """The predictions with the violations of their actions added (after the candidate's
    checks); only those with a malformed action are copied. Errored ones have no output."""
    found = predictions
    for i, p in enumerate(predictions):
        if p.error is not None:
            continue
        violations = _violations(p)
        if len(violations) > len(p.violations):
            if found is predictions:
                found = list(predictions)
            found[i] = replace(p, violations=violations)
    return found


def _violations(p: Prediction) -> tuple[str, ...]:
    """Its violations and those of its actions, each once (a prediction written without
    going through :func:`with_action_violations` still has them)."""
    output = p.output
    # Most outputs propose no actions: answered without reading them (three calls per
    # prediction and batch, a tenth of a replay's time before this test).
    if p.error is not None or not isinstance(output, dict) or ACTIONS_KEY not in output:
        return p.violations
    more = tuple(v for v in action_violations(p.output) if not _known(v, p.violations))
    return p.violations + more


def _known(violation: str, violations: tuple[str, ...]) -> bool:
    # A check may have named the same problem shortened (to 200 characters and "…").
    return any(v == violation or (v.endswith("…") and violation.startswith(v[:-1]))
               for v in violations)


class _ActionRow(NamedTuple):
    ordinal: int | None
    tool: str | None
    arguments: str | None
    action_id: str | None
    confidence: float | None
    valid: bool
    problem: str | None


def _action_rows(value: Any, violations: tuple[str, ...] = ()) -> Iterator[_ActionRow]:
    """One row per element of the value's ``actions``, in their order.

    ``violations`` are the prediction's: one naming an action's index (``actions[2]``,
    ``output.actions.2``) makes that action invalid, with the violation as its problem.
    """
    read = actions_of(value)
    if not read.actions and not read.problems:
        return
    named: dict[int, str] = {}
    for text in violations:
        if text.startswith(ACTIONS_CHECK):
            continue
        for match in _NAMES_ACTION.finditer(text):
            named.setdefault(int(match.group(1) or match.group(2)), text)
    if not isinstance(value[ACTIONS_KEY], list):  # one problem, of the whole value
        yield _ActionRow(None, None, None, None, None, False, read.problems[0])
        return
    # The list's elements in order: each an action at its place (``at``), or the next problem.
    valid = dict(read.indexed())
    problems = iter(read.problems)
    for ordinal in range(len(read.actions) + len(read.problems)):
        action = valid.get(ordinal)
        if action is None:
            yield _ActionRow(ordinal, None, None, None, None, False, next(problems))
            continue
        violation = named.get(ordinal)
        yield _ActionRow(ordinal, action.tool, orjson.dumps(action.arguments).decode(),
                         action.id, action.confidence, violation is None, violation)


def _rows_table(rows: list[_ActionRow], side: str, link: dict[str, pa.Array]) -> pa.Table:
    return pa.table({
        "side": pa.array([side] * len(rows), pa.string()),
        **link,
        "ordinal": pa.array([r.ordinal for r in rows], pa.int32()),
        "tool": pa.array([r.tool for r in rows], pa.string()),
        "arguments": pa.array([r.arguments for r in rows], pa.string()),
        "action_id": pa.array([r.action_id for r in rows], pa.string()),
        "confidence": pa.array([r.confidence for r in rows], pa.float64()),
        "valid": pa.array([r.valid for r in rows], pa.bool_()),
        "problem": pa.array([r.problem for r in rows], pa.string()),
    })


def prediction_actions_table(predictions: list[Prediction]) -> pa.Table:
    """The rows of table ``actions`` for these predictions (none for errored ones)."""
    rows: list[_ActionRow] = []
    owners: list[Prediction] = []
    for p in predictions:
        output = p.output
        if p.error is None and isinstance(output, dict) and ACTIONS_KEY in output:
            for row in _action_rows(output, _violations(p)):
                rows.append(row)
                owners.append(p)
    return _rows_table(rows, "prediction", {
        "event_id": pa.array([p.event_id for p in owners], pa.string()),
        "candidate": pa.array([p.candidate for p in owners], pa.string()),
        "version": pa.array([p.version for p in owners], pa.string()),
    })


def _outcome_actions_table(outcomes: list[Outcome]) -> pa.Table:
    rows: list[_ActionRow] = []
    keys: list[str] = []
    times: list[datetime] = []
    for o in outcomes:
        for row in _action_rows(o.outcome):
            rows.append(row)
            keys.append(o.key)
            times.append(o.decided_at)
    return _rows_table(rows, "outcome", {
        "key": pa.array(keys, pa.string()),
        "decided_at": pa.array(times, UTC_TIMESTAMP),
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
    "requests": ("request_hash",),
}


# The long form of segments, for slicing in SQL; unnested by DuckDB, which is
# cheaper than a nested Python loop per event.
_SEGMENTS_SQL = """
INSERT INTO event_segments
SELECT n.event_id, s.key, s.value ->> '$' FROM new_rows n, json_each(n.segment) s
"""


# Actions go to one table; an outcome's only while the outcome itself is new (so before
# it is inserted), as a prediction's are written only with a new prediction.
_ACTIONS_SQL = {
    "prediction_actions": "INSERT INTO actions BY NAME SELECT * FROM new_rows",
    "outcome_actions": "INSERT INTO actions BY NAME SELECT n.* FROM new_rows n "
                       "ANTI JOIN outcomes t ON t.key = n.key AND t.decided_at = n.decided_at",
}


def _any_segment(events: pa.Table) -> bool:
    """Whether some event has a segment (a statement fewer per batch when none has)."""
    return bool(pc.any(pc.not_equal(events["segment"], "{}")).as_py())


def stored_before(
    db: duckdb.DuckDBPyConnection, event_ids: pa.Array, unwritten: pa.Table | None = None,
) -> tuple[list[int], list[str | None], list[str | None], list[bool]]:
    """The rows of ``event_ids`` that repeat an id, stored or earlier in the array.

    An anti-join in the engine instead of a set of every id ever seen in Python: the
    store answers for earlier batches, the window for this one. ``unwritten`` are rows of
    table ``events`` not written yet, which count as stored. Returns four columns: each
    such row's index in ``event_ids``, the source and position the id was stored from
    (``None`` when only an earlier row of the array has it), and whether the store itself
    holds it.
    """
    # Read by name in the SQL below (DuckDB's replacement scan, as in :func:`insert`).
    batch_ids = pa.table({"event_id": event_ids,  # noqa: F841
                          "idx": pa.array(range(len(event_ids)), pa.int64())})
    stored = "SELECT event_id, source, position, true AS in_store FROM events"
    if unwritten is not None:
        unwritten_events = unwritten.select(["event_id", "source", "position"])  # noqa: F841
        stored += (" UNION ALL SELECT event_id, source, position, false AS in_store"
                   " FROM unwritten_events")
    found = db.execute(
        "SELECT b.idx, e.source, e.position, coalesce(e.in_store, false) FROM ("  # noqa: S608
        "  SELECT idx, event_id, row_number() OVER (PARTITION BY event_id ORDER BY idx) AS nth"
        f"  FROM batch_ids) b LEFT JOIN ({stored}) e USING (event_id)"
        " WHERE b.nth > 1 OR e.event_id IS NOT NULL ORDER BY b.idx",
    ).fetchall()  # few rows: only the repeats
    return ([int(row[0]) for row in found], [row[1] for row in found],
            [row[2] for row in found], [bool(row[3]) for row in found])


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
        if table in _ACTIONS_SQL:
            db.execute(_ACTIONS_SQL[table])
            continue
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
