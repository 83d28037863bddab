"""Records the store cannot keep become dead letters before any candidate sees them,
and the rest of their batch is stored: through a replay, a Parquet file and a webhook."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from shadow.core.models import RecordKind
from tests.cli.test_cli import run
from tests.connectors.test_signatures import SECRET, sign_github
from tests.connectors.test_webhooks import endpoint, post, running

CANDIDATE = '''
CALLS = []


def triage(event):
    CALLS.append(event.event_id)
    with open("calls.txt", "a") as calls:
        calls.write(event.event_id + "\\n")
    return "billing"
'''

CONFIG = """
candidate: {callable: triage:triage, name: triage, version: "1"}
"""


def nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth):
        value = {"deeper": value}
    return value


def event(i: int, **payload: object) -> dict[str, object]:
    return {"event_id": f"e{i}", "key": f"k{i}", "occurred_at": "2026-01-01T00:00:00Z",
            "payload": payload}


def dead_letters(db: Path) -> list[tuple[str, str, str]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return [(k, p, r) for k, p, r in con.execute(
            "SELECT kind, position, reason FROM dead_letters ORDER BY position").fetchall()]


def stored(db: Path) -> list[str]:
    with duckdb.connect(str(db), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT event_id FROM events ORDER BY 1").fetchall()]


def replay(directory: Path, events: str) -> None:
    (directory / "triage.py").write_text(CANDIDATE, encoding="utf-8")
    (directory / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    result = run(directory, "replay", events, "--config", "shadow.yaml", "--db", "s.duckdb",
                 "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_a_record_nested_too_deep_to_store_is_a_dead_letter_and_its_batch_is_stored(
    tmp_path: Path,
) -> None:
    # orjson reads 300 levels but writes at most 254: the record decodes, and cannot be kept.
    lines = [json.dumps(event(1)), json.dumps(event(2, body=nested(300))),
             json.dumps(event(3, body=nested(250))), json.dumps(event(4))]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    replay(tmp_path, "events.jsonl")
    assert stored(tmp_path / "s.duckdb") == ["e1", "e3", "e4"]
    ((kind, position, reason),) = dead_letters(tmp_path / "s.duckdb")
    assert (kind, position) == (RecordKind.EVENT.value, "line 2")
    assert "payload cannot be stored as JSON" in reason
    # The candidate never saw it.
    assert (tmp_path / "calls.txt").read_text().split() == ["e1", "e3", "e4"]


def test_decimal_columns_of_a_parquet_file_are_stored_as_numbers(tmp_path: Path) -> None:
    table = pa.table({
        "event_id": ["e1", "e2"], "key": ["k1", "k2"],
        "occurred_at": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"],
        "payload": pa.array([{"amount": Decimal("12.30")}, {"amount": Decimal("0.05")}],
                            pa.struct([("amount", pa.decimal128(10, 2))])),
    })
    pq.write_table(table, tmp_path / "events.parquet")
    replay(tmp_path, "events.parquet")
    assert stored(tmp_path / "s.duckdb") == ["e1", "e2"]
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as con:
        amounts = [r[0] for r in con.execute(
            "SELECT payload ->> '$.amount' FROM events ORDER BY event_id").fetchall()]
    assert [float(a) for a in amounts] == [12.3, 0.05]


def test_a_signed_webhook_too_deep_to_store_is_a_dead_letter_and_the_next_is_stored(
    tmp_path: Path,
) -> None:
    deep = json.dumps(event(1, body=nested(300))).encode()
    fine = json.dumps(event(2)).encode()
    with running(tmp_path, endpoint("github")) as (server, pipeline):
        first = post(server, deep, sign_github(SECRET, deep))
        second = post(server, fine, {**sign_github(SECRET, fine), "X-GitHub-Delivery": "d-2"})
        assert (first.status_code, second.status_code) == (200, 200)
        ((_, _, reason, _),) = pipeline.dead_letters()
        assert [e[0] for e in pipeline.events()] == ["e2"]
    assert "payload cannot be stored as JSON" in reason


def test_a_csv_export_with_bad_rows_stores_every_good_one(tmp_path: Path) -> None:
    good = [f"k{i},billing,2026-01-02T00:00:00Z" for i in range(1, 51)]
    lines = ["key,outcome,decided_at", *good[:10], 'k-bad,"never closed,2026-01-02T00:00:00Z',
             *good[10:20]]
    body = "\n".join(lines).encode() + b"\nk-latin,caf\xe9,2026-01-02T00:00:00Z\n" + \
        "\n".join(good[20:]).encode() + b"\n"
    (tmp_path / "outcomes.csv").write_bytes(body)
    (tmp_path / "events.jsonl").write_text(json.dumps(event(1)) + "\n", encoding="utf-8")
    (tmp_path / "triage.py").write_text(CANDIDATE, encoding="utf-8")
    (tmp_path / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    result = run(tmp_path, "replay", "events.jsonl", "--outcomes", "outcomes.csv", "--config",
                 "shadow.yaml", "--db", "s.duckdb", "--quiet")
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as con:
        keys = {k for (k,) in con.execute("SELECT key FROM outcomes").fetchall()}
    assert keys == {f"k{i}" for i in range(1, 51)}
    reasons = {p: r for k, p, r in dead_letters(tmp_path / "s.duckdb")
               if k == RecordKind.OUTCOME.value}
    assert list(reasons) == ["line 12", "line 23"]
    assert "unbalanced quote" in reasons["line 12"] and "UTF-8" in reasons["line 23"]
