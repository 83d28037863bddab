"""Replay throughput against DuckDB's own JSON reader, measured in the same run.

    python bench/replay_vs_duckdb.py [--events 1000000] [--dir bench/out]

Generates canonical events (payloads of a few hundred bytes), then times
1. DuckDB's ``read_json`` loading the file into a table of a fresh database
   file (the reference: the same file read and stored, by DuckDB alone; the
   faster of two runs, after the file has been read once into the page cache), and
2. ``shadow replay`` of the same file with a trivial per-event Python
   candidate, as a subprocess (the real CLI, its own fresh store),
and prints both rates, their ratio and the replay's peak RSS.
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson

HERE = Path(__file__).resolve().parent
WORDS = ("invoice refund password login error crash delivery parcel cancel account "
         "please help urgent since yesterday customer order payment team").split()


def generate(path: Path, count: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    with path.open("wb") as out:
        for i in range(count):
            event = {
                "event_id": f"evt-{i:08d}",
                "key": f"ticket-{i:08d}",
                "occurred_at": (base + timedelta(seconds=i)).isoformat(),
                "segment": {"channel": rnd.choice(("email", "chat", "web", "phone")),
                            "tier": rnd.choice(("free", "pro", "enterprise"))},
                "payload": {"subject": " ".join(rnd.choices(WORDS, k=8)),
                            "body": " ".join(rnd.choices(WORDS, k=40)),
                            "priority": rnd.choice(("low", "normal", "high")),
                            "customer_id": rnd.randrange(10_000)},
            }
            out.write(orjson.dumps(event) + b"\n")


def warm_page_cache(path: Path) -> None:
    """Read the file once, so neither contender pays for the disk and the other not."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def time_duckdb(events: Path, work: Path) -> tuple[float, float]:
    """Wall and CPU seconds (DuckDB's threads included) of the reference."""
    db_path = work / "reference.duckdb"
    db_path.unlink(missing_ok=True)
    started, cpu = time.perf_counter(), time.process_time()
    with duckdb.connect(str(db_path)) as db:
        db.execute("CREATE TABLE events AS SELECT * FROM read_json(?)", [str(events)])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    db_path.unlink(missing_ok=True)
    return elapsed, cpu


def time_replay(events: Path, work: Path, count: int) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS of the replay; exits if the store does not
    hold every event."""
    db_path = work / "replay.duckdb"
    db_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "shadow", "replay", str(events), "--quiet",
               "--candidate", "trivial_candidate:label", "--db", str(db_path)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=HERE, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    peak_mib = after.ru_maxrss / 1024
    with duckdb.connect(str(db_path), read_only=True) as db:
        stored = [db.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
                  for table in ("events", "predictions")]
    if stored != [count, count]:
        raise SystemExit(f"the replay stored {stored[0]:,} events and {stored[1]:,} "
                         f"predictions, expected {count:,} each")
    db_path.unlink(missing_ok=True)
    return elapsed, cpu, peak_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    events = args.dir / f"events-{args.events}.jsonl"
    if not events.exists():
        print(f"generating {args.events:,} events into {events}", flush=True)
        generate(events, args.events)
    size_mib = events.stat().st_size / 2**20
    print(f"{args.events:,} events, {size_mib:,.0f} MiB, "
          f"{events.stat().st_size / args.events:,.0f} bytes per event")

    warm_page_cache(events)
    # The best of two: the reference must not be flattered by the replay's position.
    reference, ref_cpu = min(time_duckdb(events, args.dir), time_duckdb(events, args.dir))
    replay, replay_cpu, peak = time_replay(events, args.dir, args.events)
    ref_rate, replay_rate = args.events / reference, args.events / replay
    print(f"duckdb read_json into a table : {reference:7.2f} s  {ref_rate:>10,.0f} events/s"
          f"  ({ref_cpu:.2f} CPU s)")
    print(f"shadow replay (trivial cand.) : {replay:7.2f} s  {replay_rate:>10,.0f} events/s"
          f"  ({replay_cpu:.2f} CPU s, {1e6 * replay_cpu / args.events:.1f} µs per event)")
    print(f"ratio replay / duckdb         : {replay_rate / ref_rate:7.3f}")
    print(f"replay peak RSS               : {peak:7.0f} MiB")


if __name__ == "__main__":
    main()
