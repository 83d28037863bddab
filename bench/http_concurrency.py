"""HTTP candidate throughput against a slow endpoint, many calls in flight.

    python bench/http_concurrency.py [--events 20000] [--concurrency 64] [--delay 0.1]

Generates canonical events under ``bench/out/`` (the generator of
``replay_vs_duckdb.py``), then, ``--runs`` times (default 2):

1. starts ``slow_endpoint.py`` (answers every POST after ``--delay`` s) as a
   subprocess on a free port,
2. runs the real CLI, ``shadow replay EVENTS --candidate URL --concurrency N
   --batch-size B --quiet``, as a subprocess into a fresh store, with B at least
   the number of events so that all of them are one batch, and times it from
   process start to exit,
3. stops the server with SIGTERM and reads how many requests it served, the
   most it had in flight and the time from its first request to its last answer,
4. checks the store: every event has exactly one prediction, none an error.

Throughput is events / wall time of the replay command, start-up included; the
best run counts. The target is 90 % of the ideal ``concurrency / delay``.
For reference, the same calls are then made by a bare aiohttp loop in this
process (the same bodies, connector limit and semaphore; no store, no
models) against a fresh server, so that what the tool adds can be told apart
from what the client library and the machine allow (``--no-raw`` skips it).
``--profile FILE`` runs the replays under cProfile and writes the last one's
stats to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from replay_vs_duckdb import generate  # noqa: E402  (a sibling script, not a package)

EXPECTED_OUTPUT = {"category": "billing", "confidence": 0.9}


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str


@dataclass
class Run:
    label: str
    wall_s: float
    cpu_s: float | None
    served: int
    max_in_flight: int
    busy_s: float | None
    server_cpu_s: float | None
    before_s: float | None = None
    """From the start of the command to the server's first request."""
    after_s: float | None = None
    """From the server's last answer to the end of the command."""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_server(delay: float) -> Server:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "slow_endpoint.py"), "--port", "0", "--delay", str(delay)],
        stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline().strip()
    if not first.startswith("listening on "):
        process.kill()
        raise SystemExit(f"slow_endpoint.py did not start: {first!r}")
    port = int(first.rsplit(" ", 1)[1])
    return Server(process, f"http://127.0.0.1:{port}/predict")


def stop_server(server: Server) -> tuple[dict[str, Any], float]:
    """SIGTERM, then the server's JSON line and the CPU time it used."""
    before = children_cpu()
    server.process.terminate()
    out, _ = server.process.communicate(timeout=30)
    cpu = children_cpu() - before
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"slow_endpoint.py printed no statistics: {out!r}")
    return json.loads(lines[-1]), cpu


def shadow_command() -> list[str]:
    script = Path(sys.executable).parent / "shadow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shadow"]


def run_replay(events: Path, count: int, args: argparse.Namespace, db: Path,
               profile: Path | None) -> Run:
    for path in (db, db.with_name(db.name + ".wal")):
        path.unlink(missing_ok=True)
    server = start_server(args.delay)
    command = shadow_command()
    if profile is not None:
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "shadow"]
    command += ["replay", str(events), "--candidate", server.url,
                "--concurrency", str(args.concurrency), "--batch-size", str(max(20_000, count)),
                "--db", str(db), "--quiet"]
    env = {k: v for k, v in os.environ.items() if k not in ("SHADOW_DB", "SHADOW_CONFIG")}
    try:
        cpu_before = children_cpu()
        started, started_epoch = time.perf_counter(), time.time()
        done = subprocess.run(command, cwd=args.dir, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - started
        ended_epoch = time.time()
        cpu = children_cpu() - cpu_before
    finally:
        stats, server_cpu = stop_server(server)
    if done.returncode != 0:
        raise SystemExit(f"shadow replay failed ({done.returncode}):\n{done.stderr}")
    check_store(db, count)
    first, last = stats["first_request_at"], stats["last_response_at"]
    return Run("shadow replay", wall, cpu, int(stats["served"]), int(stats["max_in_flight"]),
               stats["busy_s"], server_cpu,
               before_s=first - started_epoch if first else None,
               after_s=ended_epoch - last if last else None)


def check_store(db: Path, count: int) -> None:
    """Every event stored once, with exactly one prediction that is not an error."""
    with duckdb.connect(str(db), read_only=True) as con:
        (events,) = con.execute("SELECT count(*) FROM events").fetchall()[0]
        total, distinct = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM predictions").fetchall()[0]
        kinds = dict(con.execute(
            "SELECT coalesce(error_kind, 'none'), count(*) FROM predictions GROUP BY 1"
        ).fetchall())
        outputs = con.execute("SELECT DISTINCT output FROM predictions").fetchall()
    problems = []
    if events != count:
        problems.append(f"{events} events stored, expected {count}")
    if total != count or distinct != count:
        problems.append(f"{total} predictions for {distinct} events, expected {count} each")
    if set(kinds) != {"none"}:
        problems.append(f"predictions by error_kind: {kinds}")
    if [json.loads(o) for (o,) in outputs] != [EXPECTED_OUTPUT]:
        problems.append(f"unexpected outputs: {outputs[:5]}")
    if problems:
        raise SystemExit("store check failed: " + "; ".join(problems))


def run_raw(events: Path, args: argparse.Namespace) -> Run:
    """The same calls from a bare aiohttp loop in this process: the client's own ceiling."""
    import aiohttp  # only the reference needs it here

    bodies = [line for line in events.read_bytes().splitlines() if line]

    async def all_calls(url: str) -> int:
        slots = asyncio.Semaphore(args.concurrency)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(
            connector=connector, headers={"content-type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=10.0),
        ) as client:
            async def call(body: bytes) -> bool:
                async with slots, client.post(url, data=body) as response:
                    return response.status == 200 and bool(json.loads(await response.read()))

            return sum(await asyncio.gather(*(call(b) for b in bodies)))

    server = start_server(args.delay)
    try:
        cpu_before = time.process_time()
        started = time.perf_counter()
        ok = asyncio.run(all_calls(server.url))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
    finally:
        stats, server_cpu = stop_server(server)
    if ok != len(bodies):
        raise SystemExit(f"bare aiohttp loop: {len(bodies) - ok} calls failed")
    return Run("bare aiohttp loop", wall, cpu, int(stats["served"]), int(stats["max_in_flight"]),
               stats["busy_s"], server_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=2, help="replays; the best counts")
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    parser.add_argument("--no-raw", action="store_true", help="skip the bare aiohttp reference")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the replays under cProfile, stats of the last one to FILE")
    args = parser.parse_args()
    if args.events < 1 or args.concurrency < 1 or args.delay <= 0 or args.runs < 1:
        parser.error("--events, --concurrency, --runs and --delay must be positive")
    args.dir = args.dir.resolve()
    args.dir.mkdir(parents=True, exist_ok=True)
    events = args.dir / f"events-{args.events}.jsonl"
    if not events.exists():
        print(f"generating {args.events:,} events into {events}", flush=True)
        generate(events, args.events)
    ideal = args.concurrency / args.delay
    target = 0.9 * ideal
    print(f"events {args.events:,}, concurrency {args.concurrency}, delay {args.delay} s: "
          f"ideal {ideal:,.0f} events/s, target {target:,.0f} events/s (90 %)", flush=True)

    runs: list[Run] = []
    db = args.dir / "http-concurrency.duckdb"
    for i in range(args.runs):
        run = run_replay(events, args.events, args, db, args.profile)
        runs.append(run)
        report(f"replay {i + 1}", run, args.events, target)
    for path in (db, db.with_name(db.name + ".wal")):
        path.unlink(missing_ok=True)
    raw = None if args.no_raw else run_raw(events, args)
    if raw is not None:
        report("bare aiohttp", raw, args.events, target)

    best = min(runs, key=lambda r: r.wall_s)
    rate = args.events / best.wall_s
    print()
    print(f"events                : {args.events:,}")
    print(f"concurrency           : {args.concurrency}")
    print(f"delay                 : {args.delay} s")
    print(f"wall time (best of {len(runs)}) : {best.wall_s:.2f} s  (start-up and store included)")
    print(f"events/s              : {rate:,.0f}")
    print(f"target                : {target:,.0f}  (0.9 x {args.concurrency} / {args.delay} s)")
    print(f"ratio to target       : {rate / target:.3f}  "
          f"({'met' if rate >= target else 'NOT met'}; {rate / ideal:.1%} of ideal)")
    print(f"server max in flight  : {best.max_in_flight}")
    if best.busy_s:
        print(f"call phase            : {best.busy_s:.2f} s, {args.events / best.busy_s:,.0f} "
              f"events/s (server's first request to last answer)")
    if best.before_s is not None and best.after_s is not None:
        print(f"outside the calls     : {best.before_s:.2f} s before the first request, "
              f"{best.after_s:.2f} s after the last answer")
    if raw is not None:
        print(f"bare aiohttp loop     : {raw.wall_s:.2f} s, "
              f"{args.events / raw.wall_s:,.0f} events/s, client CPU {raw.cpu_s:.2f} s")


def report(label: str, run: Run, count: int, target: float) -> None:
    rate = count / run.wall_s
    busy = f"{run.busy_s:.2f} s" if run.busy_s else "-"
    phases = ""
    if run.before_s is not None and run.after_s is not None:
        phases = f", before {run.before_s:.2f} s, after {run.after_s:.2f} s"
    print(f"{label:<13} wall {run.wall_s:6.2f} s  {rate:5,.0f} events/s  "
          f"({rate / target:5.3f} of target)  client CPU {run.cpu_s:5.2f} s  "
          f"server: served {run.served:,}, max in flight {run.max_in_flight}, "
          f"CPU {run.server_cpu_s:4.2f} s; calls {busy}{phases}", flush=True)


if __name__ == "__main__":
    main()
