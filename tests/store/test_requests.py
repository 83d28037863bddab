"""Requests stored once per distinct content, on real temporary DuckDB files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shadow.core.models import Prediction, PredictionError
from shadow.store.database import Store
from shadow.store.writes import WriteBatch

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ASK = {"model": "m", "messages": [{"role": "user", "content": "Ticket: late"}],
       "temperature": 0.5}
# The same content, its keys in another order.
SAME = {"temperature": 0.5, "messages": [{"content": "Ticket: late", "role": "user"}],
        "model": "m"}
OTHER = {"model": "m", "messages": [{"role": "user", "content": "Ticket: broken, ü"}]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "shadow.duckdb") as opened:
        yield opened


def prediction(event_id: str, request: Any, *, error: PredictionError | None = None
               ) -> Prediction:
    return Prediction(event_id=event_id, candidate="chat", version="v1",
                      output=None if error else "ok", latency_ms=1.0, predicted_at=NOW,
                      error=error, request=request)


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def rows(store: Store) -> list[tuple[Any, ...]]:
    return store.db.execute(
        "SELECT r.request_hash, r.request, r.candidate, r.version, r.model FROM requests r "
        "ORDER BY r.request_hash").fetchall()


def links(store: Store) -> dict[str, str | None]:
    return dict(store.db.execute("SELECT event_id, request_hash FROM predictions").fetchall())


def test_the_same_content_is_one_row_whatever_its_key_order(store: Store) -> None:
    store.write(WriteBatch(predictions=[prediction("e1", ASK), prediction("e2", SAME)]))
    store.write(WriteBatch(predictions=[prediction("e3", OTHER), prediction("e4", ASK),
                                        prediction("e5", None)]))

    stored = rows(store)
    assert [(h, json.loads(r), c, v, m) for h, r, c, v, m in stored] == sorted(
        [(digest(ASK), ASK, "chat", "v1", "m"), (digest(OTHER), OTHER, "chat", "v1", "m")])
    assert links(store) == {"e1": digest(ASK), "e2": digest(ASK), "e3": digest(OTHER),
                            "e4": digest(ASK), "e5": None}


def test_a_failed_call_keeps_its_request_and_a_retry_adds_no_copy(store: Store) -> None:
    failed = PredictionError(type="HTTP500", message="answered 500")
    store.write(WriteBatch(predictions=[prediction("e1", ASK, error=failed)]))
    assert links(store) == {"e1": digest(ASK)}

    store.replace_predictions([prediction("e1", SAME), prediction("e2", OTHER)])

    assert [h for h, *_ in rows(store)] == sorted([digest(ASK), digest(OTHER)])
    assert links(store) == {"e1": digest(ASK), "e2": digest(OTHER)}
