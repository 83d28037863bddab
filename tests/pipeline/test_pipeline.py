"""End to end: export files -> replay_files -> DuckDB store -> report.

Every expected number is computed here, in plain Python, from the generated
input data; nothing below asks the code under test what the answer should be.
Candidates are defined in this module and named ``tests.pipeline.test_pipeline:NAME``.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shadow import batch
from shadow.core.models import Event
from shadow.pipeline.replay import ReplayRequest, replay_files
from shadow.pipeline.runner import ReplaySummary
from shadow.store.database import Store

HERE = "tests.pipeline.test_pipeline"
LABELS = ("billing", "login", "bug", "shipping")
CHANNELS = ("email", "chat", "phone")
LANGS = ("en", "fr", "de")
ACTORS = ("ana", "bo", "chidi")
BASE = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)

ReportReader = Callable[[Path], dict[str, Any]]
LineWriter = Callable[[str, Iterable[str]], Path]


# -- candidates, referred to as tests.pipeline.test_pipeline:NAME ----------------------

CALLS: list[str] = []
"""Event ids, one per call of a per-event candidate (or per event handed to a batch one)."""
BATCHES: list[list[str]] = []
"""The event ids of each list a batch candidate received."""
BATCH_ARG_TYPES: list[type] = []


@pytest.fixture(autouse=True)
def _fresh_call_logs() -> None:
    CALLS.clear()
    BATCHES.clear()
    BATCH_ARG_TYPES.clear()


def guess(event: Event) -> Any:
    CALLS.append(event.event_id)
    if event.payload.get("explode"):
        raise ValueError(f"cannot classify {event.event_id}: the model exploded")
    return event.payload["guess"]


def always_billing(event: Event) -> Any:
    CALLS.append(event.event_id)
    return "billing"


def sometimes_unserialisable(event: Event) -> Any:
    CALLS.append(event.event_id)
    returns = event.payload.get("returns")
    if returns == "set":
        return {"billing", "login"}
    if returns == "nested_set":
        return {"label": "bug", "tags": {"a", "b"}}
    if returns == "object":
        return object()
    return event.payload["guess"]


def with_confidence(event: Event) -> Any:
    CALLS.append(event.event_id)
    output = {"label": event.payload["guess"]}
    if "conf" in event.payload:
        output["confidence"] = event.payload["conf"]
    return output


@batch(size=4)
def batch_guess(events: list[Event]) -> list[Any]:
    BATCH_ARG_TYPES.append(type(events))
    BATCHES.append([e.event_id for e in events])
    return [e.payload["guess"] for e in events]


@batch(size=5)
def batch_short(events: list[Event]) -> list[Any]:
    BATCHES.append([e.event_id for e in events])
    outputs = [e.payload["guess"] for e in events]
    if any(e.payload.get("short") for e in events):
        return outputs[:-1]
    return outputs


# -- independent arithmetic ---------------------------------------------------


def wilson(agreed: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval, written out from Wilson (1927)."""
    z = NormalDist().inv_cdf(0.975)
    p = agreed / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = (z / denominator) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def test_own_wilson_matches_the_published_example() -> None:
    # 8 of 10: the textbook Wilson interval is (0.4902, 0.9433).
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)


def render(at: datetime, style: int) -> str:
    """The same instant written the ways exports write it."""
    if style == 0:
        return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 1:
        return at.astimezone(timezone(timedelta(hours=2))).isoformat()
    if style == 2:
        return at.astimezone(timezone(timedelta(hours=-5))).isoformat()
    return at.astimezone(UTC).replace(tzinfo=None).isoformat()  # naive means UTC


def final_outcomes(outcomes: Iterable[tuple[dict[str, Any], datetime]]) -> dict[str, Any]:
    latest: dict[str, tuple[datetime, Any]] = {}
    for record, at in outcomes:
        key = record["key"]
        if key not in latest or at > latest[key][0]:
            latest[key] = (at, record["outcome"])
    return {key: value for key, (_, value) in latest.items()}


@dataclass
class Expected:
    predictions: int = 0
    errors: int = 0
    compared: int = 0
    agreed: int = 0
    pending: int = 0
    segments: dict[tuple[str, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    verdicts: dict[str, bool] = field(default_factory=dict)


def expect(
    events: list[dict[str, Any]],
    outcomes: Iterable[tuple[dict[str, Any], datetime]],
    answer: Callable[[dict[str, Any]], Any] = lambda e: e["payload"]["guess"],
    fails: Callable[[dict[str, Any]], bool] = lambda e: bool(e["payload"].get("explode")),
) -> Expected:
    final = final_outcomes(outcomes)
    out = Expected()
    for event in events:
        out.predictions += 1
        if fails(event):
            out.errors += 1
            continue
        if event["key"] not in final:
            out.pending += 1
            continue
        agree = answer(event) == final[event["key"]]
        out.verdicts[event["event_id"]] = agree
        out.compared += 1
        out.agreed += agree
        for name, value in event["segment"].items():
            out.segments[(name, value)][0] += 1
            out.segments[(name, value)][1] += agree
    return out


# -- generated data -----------------------------------------------------------


@dataclass
class Dataset:
    events: list[dict[str, Any]]
    """Valid events, each once, in file order."""
    outcomes: list[tuple[dict[str, Any], datetime]]
    """Valid outcome records with the instant of their decided_at, in file order."""


def make_dataset(
    seed: int, *, n_events: int = 90, n_keys: int = 32, full_segments: bool = False
) -> Dataset:
    rng = random.Random(seed)
    keys = [f"K{i:03d}" for i in range(n_keys)]
    truth = {key: rng.choice(LABELS) for key in keys}
    events = []
    for i in range(n_events):
        key = keys[i] if i < n_keys else rng.choice(keys)
        segment = {"channel": rng.choice(CHANNELS), "lang": rng.choice(LANGS)}
        shape = rng.random()
        if not full_segments and shape < 0.1:
            del segment["lang"]
        elif not full_segments and shape < 0.15:
            segment = {}
        payload: dict[str, Any] = {
            "text": f"ticket {i}",
            "guess": truth[key] if rng.random() < 0.7 else rng.choice(LABELS),
        }
        if rng.random() < 0.1:
            payload["explode"] = True
        events.append({
            "event_id": f"E{i:04d}",
            "key": key,
            "occurred_at": render(BASE + timedelta(minutes=i), rng.randrange(4)),
            "segment": segment,
            "payload": payload,
        })
    outcomes = []
    for key in keys:
        n = rng.choices((0, 1, 2, 3), weights=(3, 4, 2, 2))[0]
        values = rng.sample(LABELS, n)
        if n and rng.random() < 0.6:
            values[-1] = truth[key]
        for value, minute in zip(values, rng.sample(range(100, 6000), n), strict=True):
            at = BASE + timedelta(minutes=minute, seconds=rng.randrange(60))
            record = {"key": key, "outcome": value, "decided_at": render(at, rng.randrange(4)),
                      "actor": rng.choice(ACTORS)}
            outcomes.append((record, at))
    rng.shuffle(outcomes)
    return Dataset(events, outcomes)


@dataclass
class NoisyFile:
    lines: list[str]
    bad: dict[int, str]
    """1-based line number of each malformed line -> a word its reason must contain."""
    duplicates: int

    @property
    def records(self) -> int:
        return sum(1 for line in self.lines if line.strip())


def _valid_event(event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "key": "K000", "occurred_at": "2024-03-01T09:00:00Z",
            "segment": {"channel": "email"}, "payload": {"guess": "bug"}}


def malformed_event_lines() -> list[tuple[str, str]]:
    """(line, word its dead-letter reason must contain)."""
    missing_key = _valid_event("BAD2")
    del missing_key["key"]
    return [
        ('{"event_id": "BAD1", "key": "K000", "occurred_at": ', "JSON"),
        (json.dumps(missing_key), "'key'"),
        (json.dumps({**_valid_event("BAD3"), "occurred_at": "yesterday at noon"}),
         "'occurred_at'"),
        (json.dumps({**_valid_event("BAD4"), "segment": "email"}), "'segment'"),
        (json.dumps({**_valid_event("BAD5"), "payload": ["not", "an", "object"]}), "'payload'"),
        (json.dumps({**_valid_event("BAD6"), "segment": {"channel": ["a", "b"]}}), "'segment'"),
        ('["E0001", "K001"]', "object"),
    ]


def noisy_event_file(seed: int, events: list[dict[str, Any]]) -> NoisyFile:
    """The events as JSONL, with duplicate lines, malformed lines and a blank line mixed in.

    One duplicate carries a different payload: the first line read must win.
    """
    rng = random.Random(seed)
    items: list[tuple[str, str, str | None]] = [
        ("event", json.dumps(e), e["event_id"]) for e in events
    ]

    def insert_after_original(event_id: str, item: tuple[str, str, str | None]) -> None:
        first = next(i for i, it in enumerate(items) if it[0] == "event" and it[2] == event_id)
        items.insert(rng.randint(first + 1, len(items)), item)

    chosen = rng.sample(events, 6)
    for event in [*chosen, chosen[0]]:  # chosen[0] appears three times in all
        insert_after_original(event["event_id"], ("dup", json.dumps(event), None))
    changed = {**chosen[1], "payload": {**chosen[1]["payload"], "guess": "CHANGED"}}
    insert_after_original(changed["event_id"], ("dup", json.dumps(changed), None))
    for line, word in malformed_event_lines():
        items.insert(rng.randint(0, len(items)), ("bad", line, word))
    items.insert(rng.randint(1, len(items)), ("blank", "", None))
    return NoisyFile(
        lines=[text for _, text, _ in items],
        bad={n: word for n, (kind, _, word) in enumerate(items, 1) if kind == "bad" and word},
        duplicates=sum(1 for kind, _, _ in items if kind == "dup"),
    )


def noisy_outcome_file(seed: int, outcomes: list[tuple[dict[str, Any], datetime]]) -> NoisyFile:
    """The outcomes as JSONL with an exact duplicate, a same-instant duplicate and bad lines."""
    rng = random.Random(seed)
    items: list[tuple[str, str, str | None]] = [
        ("outcome", json.dumps(record), None) for record, _ in outcomes
    ]
    items.append(("dup", json.dumps(outcomes[0][0]), None))
    record, at = outcomes[1]
    other_style = next(
        s for s in range(4) if render(at, s) != record["decided_at"]
    )
    items.append(("dup", json.dumps({**record, "decided_at": render(at, other_style)}), None))
    no_decided_at = {k: v for k, v in outcomes[2][0].items() if k != "decided_at"}
    for line, word in [
        (json.dumps(no_decided_at), "'decided_at'"),
        ('{"key": "K001", "outcome": "bug", ', "JSON"),
        (json.dumps({**outcomes[3][0], "decided_at": "31/02/2024"}), "'decided_at'"),
    ]:
        items.insert(rng.randint(0, len(items)), ("bad", line, word))
    return NoisyFile(
        lines=[text for _, text, _ in items],
        bad={n: word for n, (kind, _, word) in enumerate(items, 1) if kind == "bad" and word},
        duplicates=sum(1 for kind, _, _ in items if kind == "dup"),
    )


# -- helpers ------------------------------------------------------------------


def replay(
    db: Path,
    events: list[Path],
    outcomes: list[Path] | None = None,
    *,
    candidate: str = f"{HERE}:guess",
    batch_size: int | None = None,
    config: Path | None = None,
) -> ReplaySummary:
    return replay_files(ReplayRequest(
        events=events, outcomes=outcomes or [], db=db, candidate=candidate,
        batch_size=batch_size, config=config,
    ))


def the_candidate(report: dict[str, Any], name: str = f"{HERE}:guess") -> dict[str, Any]:
    matches: list[dict[str, Any]] = [c for c in report["candidates"] if c["name"] == name]
    assert len(matches) == 1, [c["name"] for c in report["candidates"]]
    return matches[0]


def assert_agreement(actual: dict[str, Any], agreed: int, compared: int) -> None:
    assert actual["method"] == "wilson"
    low, high = wilson(agreed, compared)
    assert actual["rate"] == pytest.approx(agreed / compared)
    assert actual["low"] == pytest.approx(low)
    assert actual["high"] == pytest.approx(high)


def assert_segments(actual: list[dict[str, Any]], expected: Expected) -> None:
    got = {(s["field"], s["value"]): s for s in actual}
    assert set(got) == set(expected.segments)
    for where, (compared, agreed) in expected.segments.items():
        assert got[where]["compared"] == compared, where
        assert_agreement(got[where]["agreement"], agreed, compared)


def rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Store(db, read_only=True) as store:
        return store.db.execute(sql, params or []).fetchall()


def outcome_lines(outcomes: Iterable[tuple[dict[str, Any], datetime]]) -> list[str]:
    return [json.dumps(record) for record, _ in outcomes]


def event_lines(events: Iterable[dict[str, Any]]) -> list[str]:
    return [json.dumps(event) for event in events]


# -- the numbers ----------------------------------------------------------------


def test_report_numbers_match_the_data(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=7)
    events_file = noisy_event_file(seed=8, events=data.events)
    outcomes_file = noisy_outcome_file(seed=9, outcomes=data.outcomes)
    events = write_lines("events.jsonl", events_file.lines)
    outcomes = write_lines("outcomes.jsonl", outcomes_file.lines)
    db = tmp_path / "shadow.duckdb"
    want = expect(data.events, data.outcomes)
    # The data must exercise what is checked: errors, pending keys, several outcomes per key.
    assert want.errors and want.pending and 0 < want.agreed < want.compared
    assert max(Counter(r["key"] for r, _ in data.outcomes).values()) == 3

    summary = replay(db, [events], [outcomes], batch_size=16)

    read = events_file.records
    assert read == len(data.events) + events_file.duplicates + len(events_file.bad)
    assert (summary.events_read, summary.events_stored) == (read, len(data.events))
    assert (summary.duplicates, summary.dead_letters) == (
        events_file.duplicates, len(events_file.bad))
    assert (summary.predictions, summary.prediction_errors) == (want.predictions, want.errors)
    assert (summary.outcomes_read, summary.outcomes_stored) == (
        outcomes_file.records, len(data.outcomes))
    assert summary.outcome_duplicates == outcomes_file.duplicates
    assert summary.outcome_dead_letters == len(outcomes_file.bad)
    assert (summary.compared, summary.agreed) == (want.compared, want.agreed)

    report = read_report(db)
    assert report["events_read"] == read
    assert report["events_stored"] == len(data.events)
    assert report["duplicates"] == events_file.duplicates
    assert report["dead_letters"] == len(events_file.bad)
    assert report["events_read"] == (
        report["events_stored"] + report["duplicates"] + report["dead_letters"])
    assert report["outcomes"] == {
        "stored": len(data.outcomes),
        "keys": len({r["key"] for r, _ in data.outcomes}),
        "dead_letters": len(outcomes_file.bad),
    }
    candidate = the_candidate(report)
    # The module has no __version__: the version is the fingerprint of the function.
    assert candidate["version"].startswith("fp-") and len(candidate["version"]) == 15
    assert candidate["events"] == len(data.events)
    assert candidate["predictions"] == want.predictions
    assert candidate["errors"] == want.errors
    assert candidate["error_rate"] == pytest.approx(want.errors / want.predictions)
    assert candidate["compared"] == want.compared
    assert candidate["pending"] == want.pending
    assert_agreement(candidate["agreement"], want.agreed, want.compared)
    assert_segments(candidate["segments"], want)
    latency = candidate["latency_ms"]
    assert set(latency) == {"p50", "p95", "p99"}
    assert all(latency[q] is not None and latency[q] >= 0 for q in latency)
    assert latency["p50"] <= latency["p95"] <= latency["p99"]


def test_latest_outcome_by_decided_at_wins_within_one_file(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    # In file order the last outcome is "shipping"; as text the greatest decided_at is
    # the "bug" one; by instant the latest is "login" (11:30 UTC).
    decisions = [
        ("bug", "2024-03-01T15:00:00+05:00"),  # 10:00 UTC
        ("login", "2024-03-01T09:30:00-02:00"),  # 11:30 UTC
        ("billing", "2024-03-01T11:00:00Z"),  # 11:00 UTC
        ("shipping", "2024-03-01T10:45:00"),  # naive: 10:45 UTC
    ]
    events = [
        {"event_id": f"E{label}", "key": "A", "occurred_at": "2024-03-01T08:00:00Z",
         "segment": {}, "payload": {"guess": label}}
        for label, _ in decisions
    ]
    db = tmp_path / "shadow.duckdb"
    replay(db, [write_lines("events.jsonl", event_lines(events))], [write_lines(
        "outcomes.jsonl",
        [json.dumps({"key": "A", "outcome": label, "decided_at": at}) for label, at in decisions],
    )])

    verdicts = dict(rows(db, "SELECT event_id, agree FROM comparisons"))
    assert verdicts == {"Ebug": False, "Elogin": True, "Ebilling": False, "Eshipping": False}
    decided = {r[0] for r in rows(db, "SELECT outcome_decided_at FROM comparisons")}
    assert decided == {datetime(2024, 3, 1, 11, 30, tzinfo=UTC)}
    assert_agreement(the_candidate(read_report(db))["agreement"], 1, 4)


def test_late_outcomes_in_a_second_replay_move_predictions_from_pending_to_compared(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=21)
    keys_with_outcomes = sorted({r["key"] for r, _ in data.outcomes})
    late_keys = set(random.Random(22).sample(keys_with_outcomes, len(keys_with_outcomes) // 3))
    early = [(r, at) for r, at in data.outcomes if r["key"] not in late_keys]
    late = [(r, at) for r, at in data.outcomes if r["key"] in late_keys]
    events = write_lines("events.jsonl", event_lines(data.events))
    db = tmp_path / "shadow.duckdb"
    before, after = expect(data.events, early), expect(data.events, data.outcomes)
    assert before.compared < after.compared and after.pending > 0

    first = replay(db, [events], [write_lines("outcomes-1.jsonl", outcome_lines(early))])
    candidate = the_candidate(read_report(db))
    assert (first.compared, first.agreed) == (before.compared, before.agreed)
    assert (candidate["compared"], candidate["pending"]) == (before.compared, before.pending)

    second = replay(db, [events], [write_lines("outcomes-2.jsonl", outcome_lines(late))])
    assert before.verdicts.keys() <= after.verdicts.keys()
    newly = sorted(after.verdicts.keys() - before.verdicts.keys())
    assert second.compared == len(newly) == after.compared - before.compared
    assert second.agreed == sum(after.verdicts[e] for e in newly)
    assert second.predictions == 0
    candidate = the_candidate(read_report(db))
    assert (candidate["compared"], candidate["pending"]) == (after.compared, after.pending)
    assert candidate["errors"] == after.errors
    assert_agreement(candidate["agreement"], after.agreed, after.compared)
    assert_segments(candidate["segments"], after)


def test_a_newer_outcome_in_a_later_replay_flips_the_comparison(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    guesses = {"E1": ("A", "billing"), "E2": ("A", "login"), "E3": ("B", "bug"),
               "E4": ("C", "shipping")}
    events = write_lines("events.jsonl", event_lines(
        {"event_id": event_id, "key": key, "occurred_at": "2024-03-01T08:00:00Z",
         "segment": {"channel": "email"}, "payload": {"guess": label}}
        for event_id, (key, label) in guesses.items()
    ))
    first_outcomes = [("A", "billing", "2024-03-01T10:00:00Z"),
                      ("B", "login", "2024-03-01T10:00:00Z"),
                      ("C", "shipping", "2024-03-01T12:00:00Z")]
    later_outcomes = [("A", "login", "2024-03-01T11:00:00+00:00"),  # newer: A flips
                      ("B", "bug", "2024-03-01T12:30:00+02:00"),  # 10:30 UTC, newer: B flips
                      ("C", "bug", "2024-03-01T13:00:00+03:00")]  # 10:00 UTC, older: C stays

    def outcome_file(name: str, outcomes: list[tuple[str, str, str]]) -> Path:
        return write_lines(name, [json.dumps({"key": k, "outcome": o, "decided_at": at})
                                  for k, o, at in outcomes])

    db = tmp_path / "shadow.duckdb"
    first = replay(db, [events], [outcome_file("outcomes-1.jsonl", first_outcomes)])
    assert (first.compared, first.agreed) == (4, 2)
    assert dict(rows(db, "SELECT event_id, agree FROM comparisons")) == {
        "E1": True, "E2": False, "E3": False, "E4": True}

    second = replay(db, [events], [outcome_file("outcomes-2.jsonl", later_outcomes)])
    assert (second.compared, second.agreed) == (3, 2)  # E1, E2, E3 judged again
    got = {e: (a, d) for e, a, d in rows(
        db, "SELECT event_id, agree, outcome_decided_at FROM comparisons")}
    assert got == {
        "E1": (False, datetime(2024, 3, 1, 11, 0, tzinfo=UTC)),
        "E2": (True, datetime(2024, 3, 1, 11, 0, tzinfo=UTC)),
        "E3": (True, datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),
        "E4": (True, datetime(2024, 3, 1, 12, 0, tzinfo=UTC)),
    }
    candidate = the_candidate(read_report(db))
    assert (candidate["compared"], candidate["pending"]) == (4, 0)
    assert_agreement(candidate["agreement"], 3, 4)


# -- duplicates and idempotency ---------------------------------------------------


def test_duplicate_lines_are_stored_and_predicted_once_and_counted(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=31)
    noisy = noisy_event_file(seed=32, events=data.events)
    db = tmp_path / "shadow.duckdb"

    summary = replay(db, [write_lines("events.jsonl", noisy.lines)], batch_size=7)

    assert Counter(CALLS) == Counter(e["event_id"] for e in data.events)
    assert summary.duplicates == noisy.duplicates == 8
    assert summary.events_stored == summary.predictions == len(data.events)
    report = read_report(db)
    assert report["duplicates"] == noisy.duplicates
    assert report["events_stored"] == len(data.events)
    assert the_candidate(report)["predictions"] == len(data.events)
    # The first line read wins: the changed copy of a duplicate is not what was predicted on.
    outputs = dict(rows(db, "SELECT event_id, output ->> '$' FROM predictions"))
    expected = {e["event_id"]: e["payload"]["guess"] for e in data.events
                if not e["payload"].get("explode")}
    assert {k: v for k, v in outputs.items() if v is not None} == expected


def test_replaying_the_same_inputs_again_changes_nothing(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=41)
    events = write_lines("events.jsonl", noisy_event_file(seed=42, events=data.events).lines)
    outcomes = write_lines("outcomes.jsonl",
                           noisy_outcome_file(seed=43, outcomes=data.outcomes).lines)
    db = tmp_path / "shadow.duckdb"
    replay(db, [events], [outcomes], batch_size=10)
    before = read_report(db)
    stored_rows = {t: rows(db, f"SELECT count(*) FROM {t}")[0][0]
                   for t in ("events", "outcomes", "predictions", "comparisons",
                             "dead_letters", "duplicates")}
    CALLS.clear()

    again = replay(db, [events], [outcomes], batch_size=10)

    assert CALLS == []
    assert (again.events_stored, again.predictions, again.compared) == (0, 0, 0)
    assert again.outcomes_stored == 0
    after = read_report(db)
    before.pop("generated_at")
    after.pop("generated_at")
    assert after == before
    want = expect(data.events, data.outcomes)
    candidate = the_candidate(after)
    assert (candidate["predictions"], candidate["compared"]) == (want.predictions, want.compared)
    assert stored_rows == {t: rows(db, f"SELECT count(*) FROM {t}")[0][0]
                           for t in stored_rows}


def test_the_daemon_s_way_in_stores_nothing_again_from_a_file_read_before(
    tmp_path: Path, write_lines: LineWriter
) -> None:
    """``feeds`` and ``pump``, as the daemon drives them, after a replay of the same file."""
    from connectors.files import FileSource
    from shadow.candidates import CallableCandidate
    from shadow.compare.comparators import build_comparator
    from shadow.config.candidates import CallableCandidateSpec
    from shadow.config.comparators import ExactSpec
    from shadow.pipeline.runner import Pipeline

    data = make_dataset(seed=44)
    lines = noisy_event_file(seed=45, events=data.events).lines
    events = write_lines("events.jsonl", lines)
    db = tmp_path / "shadow.duckdb"
    first = replay(db, [events], batch_size=10)
    tables = ("events", "predictions", "dead_letters", "duplicates")
    stored = {t: rows(db, f"SELECT count(*) FROM {t}")[0][0] for t in tables}
    CALLS.clear()

    # Built from the spec, as the daemon builds it: the same version as the replay's.
    spec = CallableCandidateSpec(callable=f"{HERE}:guess")
    with Store(db) as store, CallableCandidate.from_spec(spec) as candidate:
        again = Pipeline(store, candidate, build_comparator(ExactSpec()), batch_size=10)
        source = FileSource(events)
        with source:
            feeds = again.feeds([source])
            while not source.exhausted:
                again.pump(feeds)

    assert CALLS == []
    assert stored == {t: rows(db, f"SELECT count(*) FROM {t}")[0][0]
                      for t in tables}
    assert (again.summary.events_stored, again.summary.predictions) == (0, 0)
    assert again.summary.already_stored == first.events_stored


def test_a_daemon_remembers_one_batch_of_ids_and_asks_the_store_for_the_rest(
    tmp_path: Path, write_lines: LineWriter
) -> None:
    from connectors.files import FileSource
    from shadow.candidates import CallableCandidate
    from shadow.compare.comparators import build_comparator
    from shadow.config.comparators import ExactSpec
    from shadow.pipeline.runner import Pipeline

    data = make_dataset(seed=46)
    noisy = noisy_event_file(seed=47, events=data.events)
    events = write_lines("events.jsonl", noisy.lines)
    replay(tmp_path / "replayed.duckdb", [events], batch_size=10)
    largest = 0
    with Store(tmp_path / "daemon.duckdb") as store, \
            CallableCandidate(guess, name=f"{HERE}:guess") as candidate:
        daemon_way = Pipeline(store, candidate, build_comparator(ExactSpec()), batch_size=10,
                            remember_ids=False)
        with FileSource(events) as source:
            feeds = daemon_way.feeds([source])
            while not source.exhausted:
                daemon_way.pump(feeds)
                largest = max(largest, len(daemon_way._seen))
    assert 0 < largest <= 10
    for table, columns in (("events", "event_id, position"), ("duplicates", "event_id, position"),
                           ("predictions", "event_id, output")):
        query = f"SELECT {columns} FROM {table} ORDER BY ALL"
        assert rows(tmp_path / "daemon.duckdb", query) == \
            rows(tmp_path / "replayed.duckdb", query), table
    assert rows(tmp_path / "daemon.duckdb", "SELECT count(*) FROM duplicates")[0][0] > 0


# -- malformed input ------------------------------------------------------------------


def test_malformed_lines_become_dead_letters_and_the_replay_goes_on(
    tmp_path: Path, write_lines: LineWriter
) -> None:
    data = make_dataset(seed=51)
    events_file = noisy_event_file(seed=52, events=data.events)
    outcomes_file = noisy_outcome_file(seed=53, outcomes=data.outcomes)
    events = write_lines("events.jsonl", events_file.lines)
    outcomes = write_lines("outcomes.jsonl", outcomes_file.lines)
    db = tmp_path / "shadow.duckdb"

    summary = replay(db, [events], [outcomes], batch_size=8)

    assert summary.events_stored == len(data.events)  # everything after a bad line too
    assert summary.outcomes_stored == len(data.outcomes)
    letters = rows(db, "SELECT kind, source, position, raw, reason FROM dead_letters")
    expected = {
        ("event", str(events), n): (events_file.lines[n - 1], word)
        for n, word in events_file.bad.items()
    } | {
        ("outcome", str(outcomes), n): (outcomes_file.lines[n - 1], word)
        for n, word in outcomes_file.bad.items()
    }
    got = {}
    for kind, source, position, raw, reason in letters:
        assert position.startswith("line "), position
        got[(kind, source, int(position.removeprefix("line ")))] = (raw, reason)
    assert set(got) == set(expected)
    for where, (line, word) in expected.items():
        raw, reason = got[where]
        assert raw == line
        assert reason.strip() and word in reason, (where, reason)


# -- candidate failures are data ----------------------------------------------------------


def test_a_candidate_that_raises_is_recorded_as_an_error_and_not_compared(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=61)
    db = tmp_path / "shadow.duckdb"
    exploding = {e["event_id"] for e in data.events if e["payload"].get("explode")}
    with_outcome = {r["key"] for r, _ in data.outcomes}
    assert any(e["key"] in with_outcome for e in data.events if e["event_id"] in exploding)
    want = expect(data.events, data.outcomes)

    replay(db, [write_lines("events.jsonl", event_lines(data.events))],
           [write_lines("outcomes.jsonl", outcome_lines(data.outcomes))])

    failed = rows(db, "SELECT event_id, error_type, error_message, output FROM predictions "
                      "WHERE error_type IS NOT NULL")
    assert {r[0] for r in failed} == exploding
    for event_id, error_type, message, output in failed:
        assert error_type == "ValueError"
        assert message == f"cannot classify {event_id}: the model exploded"
        assert output is None
    compared = {r[0] for r in rows(db, "SELECT event_id FROM comparisons")}
    assert not compared & exploding
    candidate = the_candidate(read_report(db))
    assert candidate["errors"] == len(exploding) == want.errors
    assert candidate["error_rate"] == pytest.approx(len(exploding) / len(data.events))
    assert candidate["compared"] == want.compared
    assert_agreement(candidate["agreement"], want.agreed, want.compared)
    assert [(k["type"], k["count"]) for k in candidate["error_kinds"]] == [
        ("ValueError", len(exploding))]


@pytest.mark.parametrize("returns", ["set", "nested_set", "object"])
def test_a_non_json_output_is_recorded_as_an_error(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader, returns: str
) -> None:
    data = make_dataset(seed=71, n_events=30, n_keys=10)
    bad = {e["event_id"] for e in data.events[::4]}
    for event in data.events:
        event["payload"].pop("explode", None)
        if event["event_id"] in bad:
            event["payload"]["returns"] = returns
    db = tmp_path / "shadow.duckdb"
    want = expect(data.events, data.outcomes, fails=lambda e: e["event_id"] in bad)

    summary = replay(db, [write_lines("events.jsonl", event_lines(data.events))],
                     [write_lines("outcomes.jsonl", outcome_lines(data.outcomes))],
                     candidate=f"{HERE}:sometimes_unserialisable")

    assert (summary.predictions, summary.prediction_errors) == (len(data.events), len(bad))
    failed = rows(db, "SELECT event_id, error_type, error_message, output FROM predictions "
                      "WHERE error_type IS NOT NULL")
    assert {r[0] for r in failed} == bad
    assert all(r[1] == "NotJSONSerializable" and r[2] and r[3] is None for r in failed)
    candidate = the_candidate(read_report(db), f"{HERE}:sometimes_unserialisable")
    assert candidate["errors"] == len(bad)
    assert (candidate["compared"], candidate["pending"]) == (want.compared, want.pending)
    assert_agreement(candidate["agreement"], want.agreed, want.compared)


def test_a_numeric_confidence_in_the_output_is_kept(
    tmp_path: Path, write_lines: LineWriter
) -> None:
    confidences: dict[str, Any] = {"E1": 0.25, "E2": 1, "E3": 0, "E4": "high", "E5": True,
                                   "E6": None}
    events = [
        {"event_id": event_id, "key": event_id, "occurred_at": "2024-03-01T08:00:00Z",
         "payload": {"guess": "bug", "conf": conf}}
        for event_id, conf in confidences.items()
    ] + [{"event_id": "E7", "key": "E7", "occurred_at": "2024-03-01T08:00:00Z",
          "payload": {"guess": "bug"}}]
    db = tmp_path / "shadow.duckdb"

    replay(db, [write_lines("events.jsonl", event_lines(events))],
           candidate=f"{HERE}:with_confidence")

    stored = dict(rows(db, "SELECT event_id, confidence FROM predictions"))
    assert stored == {"E1": 0.25, "E2": 1.0, "E3": 0.0, "E4": None, "E5": None, "E6": None,
                      "E7": None}
    outputs = {e: json.loads(o) for e, o in rows(db, "SELECT event_id, output FROM predictions")}
    assert outputs["E4"] == {"label": "bug", "confidence": "high"}


# -- batch candidates -------------------------------------------------------------------


def test_a_batch_candidate_gets_lists_no_longer_than_its_size(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=81, n_events=45, n_keys=15)
    db = tmp_path / "shadow.duckdb"
    want = expect(data.events, data.outcomes, fails=lambda e: False)

    summary = replay(db, [write_lines("events.jsonl", event_lines(data.events))],
                     [write_lines("outcomes.jsonl", outcome_lines(data.outcomes))],
                     candidate=f"{HERE}:batch_guess", batch_size=10)

    assert BATCH_ARG_TYPES and set(BATCH_ARG_TYPES) == {list}
    assert max(len(b) for b in BATCHES) == 4
    assert sorted(e for b in BATCHES for e in b) == [e["event_id"] for e in data.events]
    assert summary.predictions == len(data.events) and summary.prediction_errors == 0
    outputs = dict(rows(db, "SELECT event_id, output ->> '$' FROM predictions"))
    assert outputs == {e["event_id"]: e["payload"]["guess"] for e in data.events}
    candidate = the_candidate(read_report(db), f"{HERE}:batch_guess")
    assert (candidate["compared"], candidate["pending"]) == (want.compared, want.pending)
    assert_agreement(candidate["agreement"], want.agreed, want.compared)


def test_a_batch_returning_the_wrong_number_of_outputs_fails_the_whole_batch(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=91, n_events=40, n_keys=12)
    for event in data.events:
        event["payload"].pop("explode", None)
    for event in data.events[3::11]:
        event["payload"]["short"] = True
    short = {e["event_id"] for e in data.events if e["payload"].get("short")}
    db = tmp_path / "shadow.duckdb"

    summary = replay(db, [write_lines("events.jsonl", event_lines(data.events))],
                     [write_lines("outcomes.jsonl", outcome_lines(data.outcomes))],
                     candidate=f"{HERE}:batch_short", batch_size=12)

    assert max(len(b) for b in BATCHES) <= 5
    failing_batches = [b for b in BATCHES if short & set(b)]
    doomed = {e for b in failing_batches for e in b}
    assert len(failing_batches) == len(short) and len(doomed) > len(short)
    assert summary.prediction_errors == len(doomed)
    failed = rows(db, "SELECT event_id, error_message FROM predictions "
                      "WHERE error_type IS NOT NULL")
    assert {r[0] for r in failed} == doomed
    for _, message in failed:
        assert "expected a list of" in message
    ok = dict(rows(db, "SELECT event_id, output ->> '$' FROM predictions "
                       "WHERE error_type IS NULL"))
    assert ok == {e["event_id"]: e["payload"]["guess"] for e in data.events
                  if e["event_id"] not in doomed}
    want = expect(data.events, data.outcomes, fails=lambda e: e["event_id"] in doomed)
    candidate = the_candidate(read_report(db), f"{HERE}:batch_short")
    assert candidate["errors"] == len(doomed)
    assert (candidate["compared"], candidate["pending"]) == (want.compared, want.pending)


# -- a second candidate ---------------------------------------------------------------------


def test_a_second_candidate_predicts_every_event_already_stored(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    data = make_dataset(seed=101)
    noisy = noisy_event_file(seed=102, events=data.events)
    events = write_lines("events.jsonl", noisy.lines)
    outcomes = write_lines("outcomes.jsonl", outcome_lines(data.outcomes))
    db = tmp_path / "shadow.duckdb"
    replay(db, [events], [outcomes], batch_size=9)
    CALLS.clear()

    second = replay(db, [events], candidate=f"{HERE}:always_billing", batch_size=9)

    assert Counter(CALLS) == Counter(e["event_id"] for e in data.events)
    assert second.events_stored == 0
    assert second.predictions == len(data.events)
    report = read_report(db)
    assert report["events_read"] == noisy.records
    assert report["duplicates"] == noisy.duplicates
    assert report["dead_letters"] == len(noisy.bad)
    names = sorted(c["name"] for c in report["candidates"])
    assert names == [f"{HERE}:always_billing", f"{HERE}:guess"]
    first_want = expect(data.events, data.outcomes)
    second_want = expect(data.events, data.outcomes, answer=lambda e: "billing",
                         fails=lambda e: False)
    for name, want in [(f"{HERE}:guess", first_want), (f"{HERE}:always_billing", second_want)]:
        candidate = the_candidate(report, name)
        assert candidate["predictions"] == len(data.events)
        assert candidate["errors"] == want.errors
        assert (candidate["compared"], candidate["pending"]) == (want.compared, want.pending)
        assert_agreement(candidate["agreement"], want.agreed, want.compared)
        assert_segments(candidate["segments"], want)


# -- other file formats ---------------------------------------------------------------------


@dataclass
class Tabular:
    """One data set with duplicates and bad rows, as rows every format can hold."""

    events: list[dict[str, Any]]
    event_rows: list[dict[str, Any]]
    outcomes: list[tuple[dict[str, Any], datetime]]
    duplicates: int
    bad: int


def tabular_dataset(seed: int) -> Tabular:
    data = make_dataset(seed, n_events=60, n_keys=20, full_segments=True)
    rng = random.Random(seed + 1)
    event_rows = [dict(e) for e in data.events]
    duplicates = rng.sample(data.events, 4)
    event_rows += [dict(e) for e in duplicates]
    no_key = {**data.events[0], "event_id": "BAD1"}
    del no_key["key"]
    event_rows.insert(5, no_key)
    event_rows.insert(17, {**data.events[1], "event_id": "BAD2", "occurred_at": "yesterday"})
    return Tabular(data.events, event_rows, data.outcomes, len(duplicates), 2)


def numbers(report: dict[str, Any]) -> dict[str, Any]:
    candidate = the_candidate(report)
    return {
        "events_read": report["events_read"], "events_stored": report["events_stored"],
        "duplicates": report["duplicates"], "dead_letters": report["dead_letters"],
        "outcomes": report["outcomes"],
        **{k: candidate[k] for k in ("predictions", "errors", "compared", "pending",
                                     "agreement", "segments")},
    }


def replay_jsonl(tmp_path: Path, write_lines: LineWriter, read_report: ReportReader,
                 table: Tabular) -> dict[str, Any]:
    db = tmp_path / "jsonl.duckdb"
    replay(db, [write_lines("events.jsonl", event_lines(table.event_rows))],
           [write_lines("outcomes.jsonl", outcome_lines(table.outcomes))])
    return numbers(read_report(db))


def assert_expected_numbers(got: dict[str, Any], table: Tabular) -> None:
    want = expect(table.events, table.outcomes)
    assert got["events_read"] == len(table.event_rows)
    assert got["events_stored"] == len(table.events)
    assert (got["duplicates"], got["dead_letters"]) == (table.duplicates, table.bad)
    assert (got["predictions"], got["errors"]) == (want.predictions, want.errors)
    assert (got["compared"], got["pending"]) == (want.compared, want.pending)
    assert_agreement(got["agreement"], want.agreed, want.compared)
    assert_segments(got["segments"], want)


def test_csv_files_give_the_same_numbers_as_jsonl(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    table = tabular_dataset(seed=111)
    columns = ["event_id", "key", "occurred_at", "segment.channel", "segment.lang",
               "payload.text", "payload.guess", "payload.explode"]
    events = tmp_path / "events.csv"
    with events.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in table.event_rows:
            segment, payload = row["segment"], row["payload"]
            writer.writerow([
                row["event_id"], row.get("key", ""), row["occurred_at"],
                segment["channel"], segment["lang"], payload["text"], payload["guess"],
                "true" if payload.get("explode") else "",
            ])
    outcomes = tmp_path / "outcomes.csv"
    with outcomes.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "outcome", "decided_at", "actor"])
        for record, _ in table.outcomes:
            writer.writerow([record["key"], record["outcome"], record["decided_at"],
                             record["actor"]])
    db = tmp_path / "csv.duckdb"

    replay(db, [events], [outcomes])

    got = numbers(read_report(db))
    assert_expected_numbers(got, table)
    assert got == replay_jsonl(tmp_path, write_lines, read_report, table)


def test_parquet_files_give_the_same_numbers_as_jsonl(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    table = tabular_dataset(seed=121)
    events = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"event_id": r["event_id"], "key": r.get("key"), "occurred_at": r["occurred_at"],
         "segment": r["segment"], "payload": r["payload"]}
        for r in table.event_rows
    ]), events)
    outcomes = tmp_path / "outcomes.parquet"
    pq.write_table(pa.table({
        "key": [r["key"] for r, _ in table.outcomes],
        "outcome": [r["outcome"] for r, _ in table.outcomes],
        "decided_at": pa.array([at for _, at in table.outcomes], pa.timestamp("us", tz="UTC")),
        "actor": [r["actor"] for r, _ in table.outcomes],
    }), outcomes)
    db = tmp_path / "parquet.duckdb"

    replay(db, [events], [outcomes])

    got = numbers(read_report(db))
    assert_expected_numbers(got, table)
    assert got == replay_jsonl(tmp_path, write_lines, read_report, table)


def test_a_null_segment_attribute_in_parquet_is_absent_like_in_jsonl_and_csv(
    tmp_path: Path, write_lines: LineWriter, read_report: ReportReader
) -> None:
    # A JSONL event without "lang" is valid; written to Parquet, the struct column
    # gives that row lang = null. It is the same event and must not become a dead letter.
    events = [
        {"event_id": "E1", "key": "A", "occurred_at": "2024-03-01T08:00:00Z",
         "segment": {"channel": "email", "lang": "en"}, "payload": {"guess": "bug"}},
        {"event_id": "E2", "key": "B", "occurred_at": "2024-03-01T08:00:00Z",
         "segment": {"channel": "chat"}, "payload": {"guess": "bug"}},
    ]
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(events), path)
    db = tmp_path / "parquet.duckdb"

    summary = replay(db, [path])

    assert (summary.events_stored, summary.dead_letters) == (2, 0)
    segments = rows(db, "SELECT event_id, field, value FROM event_segments ORDER BY ALL")
    assert segments == [("E1", "channel", "email"), ("E1", "lang", "en"),
                        ("E2", "channel", "chat")]
