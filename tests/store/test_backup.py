"""``shadow backup``: a copy of the store, from the file or through a running daemon."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.pipeline.runner import Pipeline
from shadow.store.backup import backup_in_turn
from shadow.store.database import Store
from shadow.testing import ListSource
from tests.daemon_process import TOKEN, get, ready_api, start_daemon, stop
from tests.http_server import Reply, Request, TestServer
from tests.waiting import wait_until

N = 300
LABELS = ["billing", "login", "refund"]
KEY_TABLES = ("events", "predictions", "outcomes", "comparisons", "dead_letters")


def event(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "key": f"t{i}", "occurred_at": "2026-01-01T00:00:00Z",
            "segment": {"tier": "pro" if i % 3 else "free"}, "payload": {"i": i}}


def outcome(i: int) -> dict[str, Any]:
    return {"key": f"t{i}", "outcome": LABELS[i % 2], "decided_at": "2026-01-02T00:00:00Z"}


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    db = tmp_path / "shadow.duckdb"
    records: list[Any] = [event(i) for i in range(N)] + ["{not json"]
    with Store(db) as store, CallableCandidate(
            lambda e: LABELS[e.payload["i"] % 3], name="triage") as candidate:
        Pipeline(store, candidate, build_comparator(ExactSpec())).run(
            [ListSource(records)],
            [ListSource([outcome(i) for i in range(N)])])
    return db


def shadow(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    return subprocess.run([sys.executable, "-m", "shadow", *args], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120,
                          check=False)


def rows(db: Path, table: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as connection:
        return sorted(connection.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def tables(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as connection:
        names = [n for (n,) in connection.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()]
        return {n: connection.execute(f'SELECT count(*) FROM "{n}"').fetchall()[0][0]
                for n in names}


def test_a_backup_holds_every_row_of_every_table(filled: Path, tmp_path: Path) -> None:
    before = datetime.now(UTC)
    result = shadow(tmp_path, "backup", "copy.duckdb", "--db", str(filled), "--format", "json")
    assert result.returncode == 0, result.stderr
    reported = json.loads(result.stdout)
    assert before <= datetime.fromisoformat(reported["taken_at"]) <= datetime.now(UTC)
    copy = tmp_path / "copy.duckdb"
    assert reported["path"] == str(copy)
    assert reported["size_bytes"] == copy.stat().st_size
    assert tables(copy) == tables(filled) == reported["rows"]
    assert reported["rows"]["events"] == N and reported["rows"]["dead_letters"] == 1
    for table in KEY_TABLES:
        assert rows(copy, table) == rows(filled, table), table
    # The copy is a store: it opens at the current schema and reports like the original.
    report = shadow(tmp_path, "report", "--db", "copy.duckdb", "--format", "json")
    assert report.returncode == 0, report.stderr
    (candidate,) = json.loads(report.stdout)["candidates"]
    agreed = sum(LABELS[i % 3] == LABELS[i % 2] for i in range(N))
    assert candidate["compared"] == N
    assert candidate["agreement"]["rate"] == pytest.approx(agreed / N)
    assert sorted(p.name for p in tmp_path.iterdir() if "copy" in p.name) == ["copy.duckdb"]


def test_rows_still_only_in_the_write_ahead_log_are_in_the_copy(filled: Path,
                                                                tmp_path: Path) -> None:
    with duckdb.connect(str(filled)) as db:  # a writer that stopped before checkpointing
        db.execute("PRAGMA disable_checkpoint_on_shutdown")
        db.execute("SET checkpoint_threshold = '1GB'")
        db.execute("INSERT INTO dead_letters (kind, source, position, raw, reason, received_at) "
                   "SELECT 'event', 'late.jsonl', 'line ' || i, 'x', 'late', now() "
                   "FROM range(7) r(i)")
    assert Path(str(filled) + ".wal").stat().st_size > 0
    result = shadow(tmp_path, "backup", "copy.duckdb", "--db", str(filled), "--format", "json")
    assert result.returncode == 0, result.stderr
    copy = tmp_path / "copy.duckdb"
    assert not Path(str(copy) + ".wal").exists()  # one self-contained file
    assert json.loads(result.stdout)["rows"]["dead_letters"] == 1 + 7
    assert rows(copy, "dead_letters") == rows(filled, "dead_letters")


def test_the_text_summary_names_the_counts_and_how_to_restore(filled: Path,
                                                               tmp_path: Path) -> None:
    result = shadow(tmp_path, "backup", "b.duckdb", "--db", str(filled))
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert re.fullmatch(
        rf"backed up {re.escape(str(filled))} to {re.escape(str(tmp_path / 'b.duckdb'))} "
        rf"as of \d{{4}}-\d\d-\d\dT[\d:.]+\+00:00: {N} events, {N} predictions, "
        rf"{N} outcomes, {N} comparisons \([\d.]+ MB in [\d.]+ s\)", first), first
    assert second == f"to restore: stop the daemon, then put b.duckdb in place of {filled}"


@pytest.mark.parametrize("where", ["existing", "missing directory"])
def test_a_backup_never_overwrites_and_needs_its_directory(filled: Path, tmp_path: Path,
                                                          where: str) -> None:
    target = tmp_path / "old.duckdb" if where == "existing" else tmp_path / "nowhere" / "b.duckdb"
    if where == "existing":
        target.write_bytes(b"yesterday's backup")
    result = shadow(tmp_path, "backup", str(target), "--db", str(filled))
    assert result.returncode == 2
    expected = "exists; choose a new file name" if where == "existing" else "does not exist"
    assert expected in result.stderr and "Traceback" not in result.stderr
    if where == "existing":
        assert target.read_bytes() == b"yesterday's backup"
    else:
        assert not target.parent.exists()
    assert not list(tmp_path.glob(".*.partial*"))


# -- through a running daemon -----------------------------------------------------------------


@pytest.fixture
def slow_candidate() -> Iterator[TestServer]:
    def reply(request: Request) -> Reply:
        i = int(request.json()["event_id"][1:])
        return Reply(body={"category": LABELS[i % 3]}, delay_s=0.01)

    with TestServer(reply) as server:
        yield server


def test_a_running_daemon_takes_the_backup_between_two_batches(
        tmp_path: Path, slow_candidate: TestServer) -> None:
    n = 2000
    (tmp_path / "events.jsonl").write_text(
        "".join(json.dumps(event(i)) + "\n" for i in range(n)), encoding="utf-8")
    config = tmp_path / "daemon.yaml"
    config.write_text(f"""
candidate: {{kind: http, url: {slow_candidate.url}/predict, name: triage, version: "1",
            concurrency: 2}}
store: {{path: daemon.duckdb, batch_size: 50}}
sources:
  events: [{{kind: file, path: events.jsonl}}]
daemon:
  api: {{port: 0}}
""", encoding="utf-8")
    elsewhere = tmp_path / "operator"
    elsewhere.mkdir()
    daemon = start_daemon(config, "daemon.log")
    try:
        api = ready_api(tmp_path / "daemon.duckdb", process=daemon)
        db = str(tmp_path / "daemon.duckdb")
        # A name, wherever the command runs, is a file in the daemon's backup folder.
        result = shadow(elsewhere, "backup", "mid.duckdb", "--db", db, "--format", "json",
                        SHADOW_API_TOKEN=TOKEN)
        assert result.returncode == 0, result.stderr
        assert get(api + "/ready")[0] == 200  # the daemon goes on
        # A path is refused before anything is sent, saying where backups go.
        path = shadow(elsewhere, "backup", str(elsewhere / "late.duckdb"), "--db", db,
                      SHADOW_API_TOKEN=TOKEN)
        again = shadow(elsewhere, "backup", "mid.duckdb", "--db", db, SHADOW_API_TOKEN=TOKEN)
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    assert "store backed up" in log
    copy = tmp_path / "backups" / "mid.duckdb"
    reported = json.loads(result.stdout)
    assert reported["path"] == str(copy) and tables(copy) == reported["rows"]
    assert os.stat(copy).st_mode & 0o777 == 0o600  # it holds what the store holds
    assert os.stat(copy.parent).st_mode & 0o777 == 0o700
    assert path.returncode == 2 and "Traceback" not in path.stderr
    assert "is an absolute path; backups are written into the daemon's backup folder " \
           "(daemon.jobs.backup_dir); give a file name, not a path: a daemon runs" in path.stderr
    assert again.returncode == 2 and "mid.duckdb exists" in again.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == []
    assert sorted(p.name for p in copy.parent.iterdir()) == ["mid.duckdb"]
    # One moment: every event in the copy has its prediction, as at every commit of the store.
    backed_up = ids(copy, "events")
    assert backed_up and backed_up == ids(copy, "predictions")

    # Put in the store's place, the copy is a store the next run continues from: the
    # export file is read again from its start, and what the copy holds is not stored twice.
    os.replace(copy, tmp_path / "daemon.duckdb")
    restarted = start_daemon(config, "daemon-2.log")
    try:
        api = ready_api(tmp_path / "daemon.duckdb", process=restarted)
        until_at_least(lambda: events_total(api), n, "shadow_events_total")
    finally:
        code, log = stop(restarted)
    assert code == 0, log
    assert ids(tmp_path / "daemon.duckdb", "events") == {f"e{i}" for i in range(n)}
    with Store(tmp_path / "daemon.duckdb", read_only=True) as store:
        assert (store.count("events"), store.count("predictions")) == (n, n)
        assert store.count("duplicates") == 0


def until_at_least(measure: Callable[[], float], wanted: float, what: str) -> float:
    """Wait until ``measure()`` is ``wanted`` or more; a timeout shows the last measure."""
    return wait_until(measure, accept=lambda value: value >= wanted, timeout_s=120,
                      interval_s=0.3, what=f"{what} to reach {wanted:g}")


def ids(db: Path, table: str) -> set[str]:
    with duckdb.connect(str(db), read_only=True) as connection:
        return {e for (e,) in connection.execute(f"SELECT event_id FROM {table}").fetchall()}


def events_total(api: str) -> float:
    status, text = get(api + "/metrics", token=TOKEN)
    assert status == 200
    (line,) = [x for x in text.splitlines() if x.startswith("shadow_events_total ")]
    return float(line.split()[1])


def test_backups_in_turn_keep_the_newest_and_touch_nothing_else(filled: Path,
                                                               tmp_path: Path) -> None:
    directory = tmp_path / "backups"
    directory.mkdir()
    strangers = [directory / "notes.txt", directory / "shadow-by-hand.duckdb",
                 directory / "other-20260101T000000.000Z.duckdb",
                 directory / "shadow-20260101T000000.000Z.duckdb.partial"]
    for stranger in strangers:
        stranger.write_text("not ours", encoding="utf-8")
    times = [datetime(2026, 3, 2, 12, 0, 0, 1000 * ms, tzinfo=UTC) for ms in (5, 7, 9, 11)]
    made = []
    with Store(filled, read_only=True) as store:
        for at in times:
            made.append(backup_in_turn(store, directory, 2, at))
    assert [b.path.name for b in made] == [f"shadow-20260302T120000.{ms:03d}Z.duckdb"
                                           for ms in (5, 7, 9, 11)]
    kept = sorted(p.name for p in directory.iterdir() if p not in strangers)
    assert kept == [made[2].path.name, made[3].path.name]
    assert all(s.read_text(encoding="utf-8") == "not ours" for s in strangers)
    assert tables(made[3].path) == tables(filled)


def test_the_daemon_backs_up_on_schedule(tmp_path: Path, slow_candidate: TestServer) -> None:
    n = 60
    (tmp_path / "events.jsonl").write_text(
        "".join(json.dumps(event(i)) + "\n" for i in range(n)), encoding="utf-8")
    config = tmp_path / "daemon.yaml"
    config.write_text(f"""
candidate: {{kind: http, url: {slow_candidate.url}/predict, name: triage, version: "1"}}
store: {{path: daemon.duckdb}}
sources:
  events: [{{kind: file, path: events.jsonl}}]
daemon:
  api: {{port: 0}}
  jobs: {{backup_every: 1s, backup_dir: copies, backup_keep: 2}}
""", encoding="utf-8")
    daemon = start_daemon(config, "daemon.log")
    try:
        api = ready_api(tmp_path / "daemon.duckdb", process=daemon)
        until_at_least(lambda: events_total(api), n, "shadow_events_total")
        # A backup that starts after this count has every event; the one running may not.
        wanted = max(backups_made(api) + 2, 4)
        until_at_least(lambda: backups_made(api), wanted, "the backups made")
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    copies = sorted((tmp_path / "copies").iterdir())
    assert [p.name[:7] for p in copies] == ["daemon-", "daemon-"]
    assert log.count('"event": "store backed up"') >= 4
    for copy in copies:
        assert ids(copy, "events") == ids(copy, "predictions")
    assert len(ids(copies[-1], "events")) == n  # made after every event was stored


def backups_made(api: str) -> float:
    status, text = get(api + "/metrics", token=TOKEN)
    assert status == 200
    found = [x for x in text.splitlines()
             if x.startswith('shadow_job_runs_total{job="backup",result="ok"}')]
    return float(found[0].split()[-1]) if found else 0.0


def damage(db: Path, seed: int = 1) -> None:
    """Random bytes over the middle third of the file, past its header."""
    import random

    rng = random.Random(seed)
    size = db.stat().st_size
    with db.open("r+b") as f:
        for at in range(size // 3, 2 * size // 3, 4096):
            f.seek(at)
            f.write(bytes(rng.randrange(256) for _ in range(64)))


def test_a_damaged_store_is_refused_and_earlier_backups_are_kept(filled: Path,
                                                                 tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    with Store(filled) as store:
        good = backup_in_turn(store, backups, 1, datetime(2026, 1, 1, tzinfo=UTC))
    with Store(filled) as store:  # fold the write-ahead log into the file before damaging it
        store.db.execute("CHECKPOINT")
    damage(filled)
    result = shadow(tmp_path, "backup", "--db", str(filled), str(backups / "fresh.duckdb"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "cannot be read in full" in result.stderr and "checksum" in result.stderr
    assert sorted(p.name for p in backups.iterdir()) == [good.path.name]
    assert tables(good.path)["events"] == N  # the good one still holds everything


@pytest.mark.parametrize("command", ["report", "replay", "dead-letters"])
def test_commands_on_a_damaged_store_fail_in_one_line(filled: Path, tmp_path: Path,
                                                      command: str) -> None:
    with Store(filled) as store:
        store.db.execute("CHECKPOINT")
    damage(filled)
    args = {"report": ["report", "--db", str(filled)],
            "dead-letters": ["dead-letters", "--db", str(filled)],
            "replay": ["replay", str(tmp_path / "events.jsonl"), "--candidate",
                       "shadow.demo.candidate:classify", "--db", str(filled)]}[command]
    (tmp_path / "events.jsonl").write_text(json.dumps(event(0)) + "\n", encoding="utf-8")
    result = shadow(tmp_path, *args)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "the store could not be read" in result.stderr or "cannot open store" in result.stderr
