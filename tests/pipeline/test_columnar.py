"""The columnar replay stores what the per-record pipeline stores, table by table.

Both pipelines replay the same mixed input into stores of their own, with the same
clock: events that take the fast path, events only pydantic reads (numbers as ids,
other time formats), malformed and unstorable records, repeats within a batch, across
batches and across files, the same files replayed again, and outcomes that repeat or
arrive late. Every table is then read back in full and compared; only the candidate's
measured latency differs between two runs, and it is left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.files import FileSource
from connectors.mapping import EventMapper, OutcomeMapper
from connectors.specs import EventMapping
from shadow.candidates.callable import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.models import Event
from shadow.pipeline import columnar
from shadow.pipeline.columnar import ColumnarPipeline
from shadow.pipeline.rows import fast_row
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
VARYING = {"stored_at", "seen_at", "applied_at", "latency_ms", "run_id"}
"""Columns that differ between any two runs of the same pipeline: the store's own clock
(``DEFAULT now()``), the candidate's measured latency, a run's random id."""


def describe(event: Event) -> dict[str, Any]:
    """An output that shows every value of the event the candidate was handed."""
    return {
        "label": str(event.payload.get("label", "none")),
        "at": event.occurred_at.isoformat(),
        "utc": event.occurred_at.astimezone(UTC).isoformat(),
        "segment": event.segment,
        "route": event.route,
        "set": sorted(event.model_fields_set),
        "payload": event.payload,
    }


def _line(**fields: Any) -> str:
    return json.dumps(fields)


def _event(n: int, **changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"e{n}", "key": f"k{n}", "occurred_at": f"2024-03-01T08:{n % 60:02d}:00Z",
        "segment": {"channel": "email"}, "payload": {"label": f"l{n % 3}", "n": n},
    }
    event.update(changes)
    return {name: value for name, value in event.items() if value is not _DROP}


_DROP: Any = object()


def _mixed_events() -> list[str]:
    deep: Any = {}
    for _ in range(300):
        deep = {"d": deep}
    return [
        _line(**_event(1)),
        _line(**_event(2, occurred_at="2024-03-01T09:00:00+02:00")),   # an offset
        _line(**_event(3, occurred_at="2024-03-01T09:00:00.123456")),  # naive: UTC
        _line(**_event(4, occurred_at=1709280000)),                    # epoch: pydantic
        _line(**_event(5, occurred_at="2024-03-01 09:00:00Z")),        # a space: pydantic
        "{not json",
        "[1, 2]",
        "",
        _line(**_event(6, event_id=600)),                                # a number as id
        _line(**_event(7, event_id="")),
        _line(**_event(8, key=_DROP)),
        _line(**_event(9, segment={"channel": None, "tier": "pro"})),
        _line(**_event(10, segment={"tier": 3})),
        _line(**_event(11, payload="text")),
        _line(**_event(12, routing_key="")),
        _line(**_event(13, routing_key=None)),
        _line(**_event(14, routing_key="r-14", segment=_DROP, payload=_DROP)),
        _line(**_event(1)),                                              # same batch repeat
        _line(**_event(15, occurred_at="0001-01-01T00:30:00+01:00")),    # before year 1 in UTC
        _line(**_event(16, payload=deep)),                               # too deep to store
        _line(**_event(17, occurred_at="2024-02-30T00:00:00Z")),         # no such day
        _line(**_event(18, occurred_at="9999-12-31T23:30:00-01:00")),    # past 9999 in UTC
        _line(**_event(2, key="k2-later")),                              # repeat, later batch
        _line(**_event(19, payload={"label": "é ✓", "x": 1.5, "big": 2**63})),
        _line(**_event(20, extra="ignored", segment={})),
        _line(**_event(21, occurred_at="2024-03-01T10:00:00+05:30")),
        _line(**_event(23, occurred_at="\u0662\u0660\u0662\u0664-03-01T08:00:00Z")),  # not ASCII
        _line(**_event(24, occurred_at="2024-03-01T24:00:00Z")),         # hour 24
        _line(**_event(25, occurred_at="2024-03-01T08:00:60Z")),         # a leap second
    ]


def _outcomes(late: bool) -> list[str]:
    rows = [
        _line(key="k1", outcome={"label": "l1"}, decided_at="2024-03-02T00:00:00Z"),
        _line(key="k1", outcome={"label": "l1"}, decided_at="2024-03-02T00:00:00Z"),
        _line(key="k3", outcome={"label": "l0"}, decided_at="2024-03-02T00:00:00+01:00"),
        _line(key="k19", outcome="l1", decided_at="2024-03-02T00:00:00Z", actor="ana"),
        "oops",
        _line(key="", outcome="l1", decided_at="2024-03-02T00:00:00Z"),
    ]
    if late:  # decided after the first replay: replaces k1's outcome, adds k21's
        rows += [_line(key="k1", outcome={"label": "l2"}, decided_at="2024-03-05T00:00:00Z"),
                 _line(key="k21", outcome={"label": "l0"}, decided_at="2024-03-05T00:00:00Z")]
    return rows


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(kind: Callable[..., Pipeline], db: Path, events: list[Path], outcomes: list[Path],
         mapping: EventMapping | None) -> dict[str, Any]:
    with Store(db) as store, CallableCandidate(describe, name="describe", version="1") as c:
        comparator = build_comparator(ExactSpec(prediction_path="label", outcome_path="label"))
        pipeline = kind(store, c, comparator,
                        event_mapper=EventMapper(mapping), outcome_mapper=OutcomeMapper(),
                        batch_size=5, now=lambda: NOW)
        return pipeline.run([FileSource(p) for p in events],
                            [FileSource(p) for p in outcomes]).as_dict()


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    with Store(db) as store:
        names = [row[0] for row in store.db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        ).fetchall()]
        for name in sorted(names):
            columns = [row[0] for row in store.db.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = ? ORDER BY ordinal_position", [name]).fetchall()
                       if row[0] not in VARYING]
            listed = ", ".join(f'"{c}"' for c in columns)
            rows = store.db.execute(f"SELECT {listed} FROM {name}").fetchall()
            found[name] = sorted(rows, key=repr)
    return found


def _replay_twice(kind: Callable[..., Pipeline], db: Path, files: dict[str, Path],
                  mapping: EventMapping | None) -> list[dict[str, Any]]:
    first = _run(kind, db, [files["events"]], [files["outcomes"]], mapping)
    # Again, with a second file repeating ids of the first and outcomes arriving late.
    second = _run(kind, db, [files["events"], files["more"]], [files["late"]], mapping)
    return [first, second]


@pytest.mark.parametrize("mapping", [
    None,
    EventMapping(event_id="id", key="ticket.key", occurred_at="ticket.at",
                 segment={"channel": "via.channel", "tier": "plan"}, payload="$",
                 routing_key=None, when={"path": "kind", "equals": "ticket"}),
], ids=["canonical", "dotted paths"])
@pytest.mark.parametrize("group_events", [columnar.GROUP_EVENTS, 3],
                         ids=["one transaction", "transactions of a few new events"])
def test_columnar_replay_stores_what_the_per_record_pipeline_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapping: EventMapping | None,
    group_events: int,
) -> None:
    # Batches of five; a transaction gathers them until it holds ``group_events`` new
    # events, so repeats fall within a transaction and across two.
    monkeypatch.setattr(columnar, "GROUP_EVENTS", group_events)
    if mapping is None:
        events, more = _mixed_events(), [_line(**_event(2)), _line(**_event(22))]
    else:
        events = [_reshaped(line) for line in _mixed_events()]
        more = [_reshaped(_line(**_event(2))), _reshaped(_line(**_event(22)))]
        events.insert(3, _line(kind="note", id="n1"))  # left out by ``when``
    files = {
        "events": _write(tmp_path / "events.jsonl", events),
        "more": _write(tmp_path / "more.jsonl", more),
        "outcomes": _write(tmp_path / "outcomes.jsonl", _outcomes(late=False)),
        "late": _write(tmp_path / "late.jsonl", _outcomes(late=True)),
    }
    old = _replay_twice(Pipeline, tmp_path / "old.duckdb", files, mapping)
    new = _replay_twice(ColumnarPipeline, tmp_path / "new.duckdb", files, mapping)

    assert new == old
    old_tables, new_tables = _tables(tmp_path / "old.duckdb"), _tables(tmp_path / "new.duckdb")
    assert list(new_tables) == list(old_tables)
    for name, rows in old_tables.items():
        assert new_tables[name] == rows, name
    # The input is as mixed as it claims: something of each kind was stored.
    assert old[0]["dead_letters"] >= 6 and old[0]["duplicates"] >= 2
    assert old[1]["already_stored"] > 0 and old[1]["outcomes_stored"] == 2
    assert len(old_tables["events"]) > 10 and old_tables["comparisons"]


def _reshaped(line: str) -> str:
    """The canonical record of ``line`` moved to the places the dotted mapping reads."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict):
        return line
    shaped: dict[str, Any] = {"kind": "ticket", "ticket": {}}
    for name, value in record.items():
        if name == "event_id":
            shaped["id"] = value
        elif name in ("key", "occurred_at"):
            shaped["ticket"]["key" if name == "key" else "at"] = value
        elif name == "segment" and isinstance(value, dict):
            shaped["via"] = {"channel": value.get("channel")}
            shaped["plan"] = value.get("tier")
        else:
            shaped[name] = value
    return json.dumps(shaped)


CSV_EVENTS = """event_id,key,occurred_at,segment.channel,payload.label,payload.extra
c1,k1,2024-03-01T08:00:00Z,email,l1,
c2,k2,2024-03-01T09:00:00+01:00,,l2,"{""a"": [1, 2]}"
c3,,2024-03-01T09:00:00Z,chat,l0,
c4,k4,yesterday,chat,l0,
c5,k5,2024-03-01T09:00:00Z,chat,l0,too,many
c1,k1-again,2024-03-01T10:00:00Z,web,l2,
c6,k6,"2024-03-01T11:00:00Z",web,"two
lines",
,k7,2024-03-01T12:00:00Z,web,l1,
c8,k8,2024-03-01T12:00:00,phone,l1,
"""


def test_columnar_replay_of_csv_stores_what_the_per_record_pipeline_stores(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.csv"
    events.write_text(CSV_EVENTS, encoding="utf-8")
    outcomes = _write(tmp_path / "outcomes.jsonl", _outcomes(late=False))
    old = _run(Pipeline, tmp_path / "old.duckdb", [events, events], [outcomes], None)
    new = _run(ColumnarPipeline, tmp_path / "new.duckdb", [events, events], [outcomes], None)

    assert new == old
    assert _tables(tmp_path / "new.duckdb") == _tables(tmp_path / "old.duckdb")
    # Of nine rows: c3 (no key), c4 (no time), c5 (cells past the header) and the row
    # without an id are dead letters, in each of the two reads; c1, c2, c6 and c8 are
    # stored; c1 repeats in the first read, and the second read repeats all five.
    assert (old["events_stored"], old["dead_letters"]) == (4, 8)
    assert old["duplicates"] == 1 + 5


@pytest.mark.parametrize("value", [
    {"event_id": "a", "key": "b", "occurred_at": "2024-03-01T08:00:00Z"},
    {"event_id": "a", "key": "b", "occurred_at": "2024-03-01T08:00:00.5-03:30",
     "segment": {"x": "y"}, "payload": {"p": [1, {"q": None}]}, "routing_key": "r"},
    {"event_id": "a", "key": "b", "occurred_at": "2024-03-01T08:00:00", "routing_key": None},
])
def test_a_fast_row_is_the_event_pydantic_validates(value: dict[str, Any]) -> None:
    row = fast_row(value)
    assert row is not None
    event = Event.model_validate(value)
    assert (row.event_id, row.key, row.occurred_at, row.segment, row.payload,
            row.routing_key) == (event.event_id, event.key, event.occurred_at, event.segment,
                                 event.payload, event.routing_key)
    assert row.present == event.model_fields_set
    assert row.occurred_at.utcoffset() == event.occurred_at.utcoffset()
