"""A CPU-bound Python candidate in one process against ``workers: 2``, measured in the same run.

    python bench/cpu_workers.py [--events 50000] [--runs 3] [--dir bench/out]

The candidate (``classify`` below) spends about 200 µs of pure Python per event on the
reference machine. For each run, in turn:

1. the candidate alone: ``predict`` over every event, built from its configuration
   with ``workers: 1`` and with ``workers: 2`` (the workers started beforehand; their
   start-up is printed on its own), and
2. the whole pipeline: ``shadow replay`` of the same file, the real CLI as a
   subprocess with a configuration of ``workers: 1`` and one of ``workers: 2``, each
   into a fresh store, timed from process start to exit (start-up of the workers included),

and prints each rate and each ratio, the CPU time of ``predict`` in each process (from
which it projects the ratio on two cores that nothing else uses: twice the single
process's CPU time over the parent's and the workers' together), then the best and worst
ratios over the runs. First it prints what handing an event to a worker costs, for the
pool's encoding and two others. The single-process reference runs in the same run as the
workers, one right after the other, so other work on the machine affects both. Each run
first measures what two cores give at that moment: ``classify`` over the subjects in one
process against two plain processes (a ``ProcessPoolExecutor``, no shadow) taking half
each, the ceiling for both ratios. Exits non-zero unless every event got one prediction
without an error, with the same outputs either way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROUNDS = 1_850
"""Iterations per event: about 200 µs of pure Python on the reference machine, when quiet."""
CATEGORIES = ("billing", "login", "delivery", "other")


def classify(event: Any) -> dict[str, Any]:
    """A stand-in for a CPU-bound model: a rolling hash of the subject, ``ROUNDS`` times."""
    value = 0
    seed = sum(map(ord, event.payload["subject"]))
    for i in range(ROUNDS):
        value = (value * 1_103_515_245 + seed + i) & 0x7FFFFFFF
    return {"category": CATEGORIES[value % 4], "confidence": (value % 1000) / 1000}


def codec_costs(events: list[Any]) -> None:
    """Print what handing events to a worker costs per event: encoding in the parent (which
    works alone while it encodes) and decoding back into ``Event`` models in the worker, for
    the encoding the pool uses and for two others, the best of three each."""
    import pickle

    import orjson
    import pyarrow as pa

    from shadow.candidates.workers import decode_events, encode_events
    from shadow.core.models import Event

    columns = ("event_id", "key", "occurred_at", "segment", "payload", "routing_key")
    schema = pa.schema([("event_id", pa.string()), ("key", pa.string()),
                        ("occurred_at", pa.timestamp("us", tz="UTC")), ("segment", pa.string()),
                        ("payload", pa.string()), ("routing_key", pa.string())])

    def arrow_encode(batch: list[Any]) -> bytes:
        # Payloads are free-form JSON: a column of their JSON text, as the store keeps them.
        arrays = [pa.array([e.event_id for e in batch]), pa.array([e.key for e in batch]),
                  pa.array([e.occurred_at for e in batch], schema.field(2).type),
                  pa.array([orjson.dumps(e.segment).decode() for e in batch]),
                  pa.array([orjson.dumps(e.payload).decode() for e in batch]),
                  pa.array([e.routing_key for e in batch], pa.string())]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
        return bytes(sink.getvalue())

    def arrow_decode(data: bytes) -> list[Any]:
        table = pa.ipc.open_stream(data).read_all().to_pylist()
        return [Event.model_validate({**row, "segment": orjson.loads(row["segment"]),
                                      "payload": orjson.loads(row["payload"])})
                for row in table]

    codecs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
        "orjson, validated back (the pool's)": (
            lambda b: encode_events(b)[1], lambda d: decode_events("json", d)),
        "pickle of the Event models": (pickle.dumps, pickle.loads),
        "Arrow IPC, payloads as JSON text": (arrow_encode, arrow_decode),
    }
    sample = events[:20_000]
    assert columns == tuple(Event.model_fields)
    for name, (encode, decode) in codecs.items():
        best_encode = best_decode = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            data = encode(sample)
            encoded = time.perf_counter()
            back = decode(data)
            best_encode = min(best_encode, encoded - started)
            best_decode = min(best_decode, time.perf_counter() - encoded)
        if back != sample:
            raise SystemExit(f"{name}: the events did not come back equal")
        print(f"hand-over {name:37s}: encode {best_encode / len(sample) * 1e6:5.1f} µs, "
              f"decode {best_decode / len(sample) * 1e6:5.1f} µs, "
              f"{len(data) / len(sample):,.0f} bytes per event")


def load_events(path: Path, count: int) -> list[Any]:
    from connectors.files import FileSource
    from shadow.core.models import Event

    with FileSource(path) as source:
        return [Event.model_validate(record.value) for record in source.poll(count)]


class _Subject:
    """Just what ``classify`` reads of an event, for the plain-process reference."""

    __slots__ = ("payload",)

    def __init__(self, subject: str) -> None:
        self.payload = {"subject": subject}


def classify_all(subjects: list[str]) -> list[dict[str, Any]]:
    return [classify(_Subject(subject)) for subject in subjects]


def machine_ceiling(events: list[Any]) -> float:
    """What two cores give right now: ``classify`` over the events' subjects in this process,
    against two plain worker processes (no shadow) taking half each; returns the ratio."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    subjects = [e.payload["subject"] for e in events]
    started = time.perf_counter()
    classify_all(subjects)
    alone = time.perf_counter() - started
    middle = len(subjects) // 2
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(classify_all, [subjects[:1], subjects[:1]]))  # both started
        started = time.perf_counter()
        list(pool.map(classify_all, [subjects[:middle], subjects[middle:]]))
        two = time.perf_counter() - started
    return alone / two


def candidate_rates(events: list[Any], count: int) -> tuple[float, float, float, list[float]]:
    """Seconds of ``predict`` with one process and with two workers, the workers' start-up,
    and CPU seconds: the single process's, then the parent's and each worker's with two."""
    from stage_timer import cpu_seconds

    from shadow.candidates import CallableCandidate, build_candidate
    from shadow.config.candidates import CallableCandidateSpec

    now = datetime.now(UTC)
    single = build_candidate(CallableCandidateSpec(callable="cpu_workers:classify"))
    started, cpu = time.perf_counter(), time.process_time()
    one = single.predict(events, now)
    one_s, cpus = time.perf_counter() - started, [time.process_time() - cpu]
    pooled = build_candidate(CallableCandidateSpec(callable="cpu_workers:classify", workers=2))
    assert isinstance(pooled, CallableCandidate)
    started = time.perf_counter()
    with pooled:
        open_s = time.perf_counter() - started
        before = [cpu_seconds(pid) for pid in pooled.worker_pids]
        started, cpu = time.perf_counter(), time.process_time()
        two = pooled.predict(events, now)
        two_s = time.perf_counter() - started
        cpus.append(time.process_time() - cpu)
        cpus += [cpu_seconds(pid) - b for pid, b in zip(pooled.worker_pids, before, strict=True)]
    for predictions in (one, two):
        if len(predictions) != count or any(p.error is not None for p in predictions):
            raise SystemExit("predict did not give every event one prediction without an error")
    if [p.output for p in one] != [p.output for p in two]:
        raise SystemExit("the workers' outputs differ from the single process's")
    return one_s, two_s, open_s, cpus


def replay_seconds(path: Path, work: Path, count: int, workers: int) -> float:
    import duckdb

    config = work / f"cpu-workers-{workers}.json"
    config.write_text(json.dumps({"version": 1, "candidate": {
        "callable": "cpu_workers:classify", "name": "classify", "workers": workers}}))
    db = work / f"cpu-workers-{workers}.duckdb"
    db.unlink(missing_ok=True)
    command = [sys.executable, "-m", "shadow", "replay", str(path), "--quiet",
               "--config", str(config), "--db", str(db)]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=HERE, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    with duckdb.connect(str(db), read_only=True) as store:
        stored, errors = store.execute(
            "SELECT count(*), count(error_type) FROM predictions").fetchall()[0]
    if (stored, errors) != (count, 0):
        raise SystemExit(f"replay with workers: {workers} stored {stored:,} predictions "
                         f"({errors:,} errors), expected {count:,} without errors")
    db.unlink(missing_ok=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    from replay_vs_duckdb import generate

    path = args.dir / f"events-{args.events}.jsonl"
    if not path.exists():
        generate(path, args.events)
    n = args.events
    events = load_events(path, n)
    if len(events) != n:
        raise SystemExit(f"read {len(events):,} events of {n:,}")
    codec_costs(events)
    ratios: dict[str, list[float]] = {"ceiling": [], "predict": [], "replay": []}
    for run in range(1, args.runs + 1):
        ceiling = machine_ceiling(events)
        ratios["ceiling"].append(ceiling)
        print(f"run {run}: two plain processes / one (the machine's ceiling now): {ceiling:.2f}")
        one_s, two_s, open_s, cpus = candidate_rates(events, n)
        print(f"run {run}: predict, 1 process      : {one_s:7.2f} s {n / one_s:>9,.0f} events/s "
              f"({one_s / n * 1e6:,.0f} µs per event)")
        print(f"run {run}: predict, workers: 2     : {two_s:7.2f} s {n / two_s:>9,.0f} events/s "
              f"(workers started in {open_s:.2f} s)")
        print(f"run {run}: CPU of predict: 1 process {cpus[0]:.2f} s; workers: 2, parent "
              f"{cpus[1]:.2f} s + workers {cpus[2]:.2f} s and {cpus[3]:.2f} s "
              f"(+{sum(cpus[1:]) / cpus[0] - 1:.0%}); projected on two free cores: "
              f"{2 * cpus[0] / sum(cpus[1:]):.2f}x")
        replay_one = replay_seconds(path, args.dir, n, 1)
        replay_two = replay_seconds(path, args.dir, n, 2)
        print(f"run {run}: shadow replay, 1 process: {replay_one:7.2f} s "
              f"{n / replay_one:>9,.0f} events/s")
        print(f"run {run}: shadow replay, workers: 2: {replay_two:7.2f} s "
              f"{n / replay_two:>9,.0f} events/s")
        ratios["predict"].append(one_s / two_s)
        ratios["replay"].append(replay_one / replay_two)
        print(f"run {run}: ratio workers: 2 / 1 process: predict {one_s / two_s:.2f}, "
              f"replay {replay_one / replay_two:.2f}", flush=True)
    for what, values in ratios.items():
        print(f"ratio {what:7s} two processes / one: best {max(values):.2f}, "
              f"worst {min(values):.2f} over {len(values)} runs")


if __name__ == "__main__":
    main()
