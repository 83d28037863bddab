# mypy: disable-error-code="attr-defined,method-assign,unused-ignore"
"""The recorder's ceiling: handed-over predictions stored into DuckDB per second.

    python bench/recorder_throughput.py [--events 100000] [--partitions 12]
                                        [--batch-size 20000] [--bootstrap HOST:PORT]
                                        [--fetches F] [--gc-between-batches] [--profile]
                                        [--daemon]

Without ``--bootstrap`` a broker of its own is started with ``scripts/kafka-local`` (free
ports, a fresh run directory under the temporary directory) and stopped at the end.

1. Produces ``--events`` events as candidate workers hand them over: each an item
   (:func:`shadow.pipeline.handoff.event_item`) of an event of about 400 bytes with one
   prediction of an HTTP candidate (output with a category, a priority and a short reply,
   confidence, latency, status, tokens, cost, model), 500 to a worker's batch, in
   messages of up to 512 kB (:func:`~shadow.pipeline.handoff.messages`), on a fresh topic
   of ``--partitions`` partitions (the default of ``workers.partitions``).
2. Runs the recorder's path in this process, as ``shadow run --role recorder`` wires it:
   a ``Pipeline`` (``remember_ids=False``, ``evaluate_each_batch=False``, the store's
   ``batch_size``) fed by ``feeds(..., recorded=[KafkaSource])`` into a fresh DuckDB
   file, pumped until every event is stored and its offsets committed.
   The consumer has the recorder's settings (``RECORDER_FETCHES`` in
   ``shadow/config/workers.py``: 4 MiB a partition, 32 MiB a fetch); ``--fetches
   kafka-python`` leaves kafka-python's defaults (1 MiB a partition), ``--fetches big``
   fetches up to 16 MiB a partition and 64 MiB a fetch. With
   ``--gc-between-batches`` the cyclic garbage collector is off while a batch is read and
   written and collects the young generation after it, as ``Pipeline.run`` (a replay)
   does and the daemon's ``pump`` does not.
3. Checks the store (every event once, one prediction each) and prints predictions
   stored per second, from the first poll to the last commit, with the time split by
   stage, and the CPU this process used meanwhile (all its threads, kafka-python's
   included), which says what it would do with a core to itself. ``--profile`` runs it
   under cProfile and prints the top functions.

With ``--daemon`` the real ``shadow run --role recorder`` reads the topic instead, as a
subprocess, timed by the events its metrics show stored (asked every second, from the
first that shows some to the one that shows all), with the CPU the process used
meanwhile.

The target (issue 23): at least 20,000 predictions/s.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import random
import shutil
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from daemon_run import time_daemon
from kafka import KafkaProducer
from local_broker import broker
from stage_timer import Stages

import shadow.pipeline.handoff as handoff_module
import shadow.store.database as store_module
from connectors.compacted import ensure_topic
from connectors.kafka import KafkaSource, Start
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.config.workers import RECORDER_FETCHES
from shadow.core.models import Event, Mode, Prediction
from shadow.pipeline.handoff import event_item, messages
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 20_000
FETCHES: dict[str, dict[str, Any]] = {
    "recorder": RECORDER_FETCHES,
    "kafka-python": {},
    "big": {"fetch_max_bytes": 64 * 2**20, "max_partition_fetch_bytes": 16 * 2**20,
            "receive_buffer_bytes": 4 * 2**20},
}
CATEGORIES = ("billing", "login", "refund", "shipping", "account", "bug")
WORDS = ("invoice refund password login error crash delivery parcel cancel account "
         "please help urgent since yesterday customer order payment team").split()


# -- broker -----------------------------------------------------------------------

# -- what workers hand over ---------------------------------------------------------

def handed_over(i: int, rnd: random.Random, base: datetime) -> bytes:
    """One event with its prediction, as an item of what a worker hands over."""
    occurred = base + timedelta(seconds=i)
    event = Event(
        event_id=f"evt-{i:08d}", key=f"ticket-{i:08d}", occurred_at=occurred,
        segment={"channel": rnd.choice(("email", "chat", "web")),
                 "tier": rnd.choice(("free", "pro", "enterprise"))},
        payload={"subject": " ".join(rnd.choices(WORDS, k=8)),
                 "body": " ".join(rnd.choices(WORDS, k=40)),
                 "priority": rnd.choice(("low", "normal", "high")),
                 "customer_id": rnd.randrange(10_000)})
    latency = rnd.uniform(80, 400)
    prediction = Prediction(
        event_id=event.event_id, candidate="triage", version="fp-3f2a9c1d7e44",
        mode=Mode.SHADOW,
        output={"category": rnd.choice(CATEGORIES), "priority": rnd.choice(("low", "high")),
                "reply": " ".join(rnd.choices(WORDS, k=12))},
        confidence=round(rnd.random(), 3), latency_ms=latency,
        predicted_at=occurred + timedelta(milliseconds=latency), status=200, attempts=1,
        ttfb_ms=latency * 0.9, prompt_tokens=rnd.randrange(200, 900),
        completion_tokens=rnd.randrange(20, 120), cost=0.0004, model="triage-2026-05")
    return event_item(event, "kafka:tickets", f"tickets/{i % 12}/{i // 12}", [prediction],
                      published=None)


WORKER_BATCH = 500
"""Events a worker hands over at a time (``shadow worker --batch-size``'s default)."""


def produce(bootstrap: str, topic: str, count: int) -> tuple[float, int]:
    """Returns seconds and the mean size of an event's item in bytes."""
    rnd, base = random.Random(1), datetime(2026, 5, 4, tzinfo=UTC)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50,
                             batch_size=512 * 1024, max_request_size=8 * 2**20)
    size = 0
    started = time.perf_counter()
    for first in range(0, count, WORKER_BATCH):
        # As a worker hands a batch over: its items in as few messages as fit.
        items = [handed_over(i, rnd, base) for i in range(first, min(first + WORKER_BATCH,
                                                                      count))]
        size += sum(len(item) for item in items)
        for value in messages(items, worker="bench-worker:1"):
            producer.send(topic, key=f"bench-worker:1 {first}".encode(), value=value)
    producer.flush()
    producer.close()
    return time.perf_counter() - started, size // count


# -- the recorder's path ------------------------------------------------------------

def record(bootstrap: str, topic: str, count: int, db: Path, batch_size: int,
           profile: bool, options: dict[str, Any], *,
           gc_between: bool) -> tuple[float, dict[str, float], str | None]:
    """Seconds from the first poll to the last commit, stage seconds, profile text."""
    for path in (db, db.with_name(db.name + ".wal")):
        path.unlink(missing_ok=True)
    stages = Stages()
    source = KafkaSource(bootstrap=bootstrap, topics=[topic],
                         group_id=f"bench-recorder-{uuid.uuid4().hex[:8]}",
                         start=Start.COMMITTED, poll_timeout_s=0.5, options=options)
    source._poll = stages.wrap("poll (kafka-python, orjson)", source._poll)
    source.commit = stages.wrap("commit offsets", source.commit)
    # The recorder names its candidates; workers call them.
    candidate = CallableCandidate(lambda event: None, name="triage", version="fp-3f2a9c1d7e44")
    original_decode = handoff_module.decode
    original_arrow = store_module.arrow_tables
    handoff_module.decode = stages.wrap("decode (handoff JSON to models)", original_decode)
    store_module.arrow_tables = stages.wrap("Arrow tables for the store", original_arrow)
    profiler = cProfile.Profile() if profile else None
    try:
        with Store(db) as store:
            pipeline = Pipeline(store, candidate, build_comparator(ExactSpec()),
                                batch_size=batch_size, evaluate_each_batch=False,
                                remember_ids=False)
            pipeline._prepare_recorded = stages.wrap("prepare (whole)",
                                                     pipeline._prepare_recorded)
            pipeline._classify = stages.wrap("deduplicate (store lookup)", pipeline._classify)
            store.write = stages.wrap("store.write", store.write)
            store.mark_published = stages.wrap("mark published", store.mark_published)
            feeds = pipeline.feeds([], recorded=[source])
            with source, ExitStack() as stack:
                if gc_between:
                    gc.disable()
                    stack.callback(gc.enable)
                started, baseline, cpu_started = None, {}, 0.0
                if profiler:
                    profiler.enable()
                stored, last_data = 0, time.perf_counter()
                while stored < count:
                    before, so_far = time.perf_counter(), dict(stages.seconds)
                    cpu_before = time.process_time()
                    read = pipeline.pump(feeds)
                    if gc_between:
                        gc.collect(1)
                    if read and started is None:
                        # From the poll that brought the first records: the group join
                        # before it is no part of the recorder's rate.
                        started, baseline, cpu_started = before, so_far, cpu_before
                    stored = pipeline.summary.events_stored
                    if read:
                        last_data = time.perf_counter()
                    elif time.perf_counter() - last_data > 60:
                        raise SystemExit(f"the recorder stalled at {stored:,} of {count:,}")
                finished, cpu_finished = time.perf_counter(), time.process_time()
                if profiler:
                    profiler.disable()
            counts = (store.count("events"), store.count("predictions"))
    finally:
        handoff_module.decode = original_decode
        store_module.arrow_tables = original_arrow
    if counts != (count, count) or pipeline.summary.dead_letters:
        raise SystemExit(f"the recorder stored {counts[0]:,} events and {counts[1]:,} "
                         f"predictions ({pipeline.summary.dead_letters} dead letters), "
                         f"expected {count:,} each")
    assert started is not None
    text = None
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        text = out.getvalue()
    spent = {name: value - baseline.get(name, 0.0) for name, value in stages.seconds.items()}
    spent["CPU"] = cpu_finished - cpu_started
    return finished - started, spent, text


def record_daemon(bootstrap: str, topic: str, count: int, directory: Path,
                  batch_size: int) -> tuple[float, int, float]:
    """The real ``shadow run --role recorder`` on ``topic``, timed by
    :func:`daemon_run.time_daemon`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "recorder.yaml"
    config.write_text(f"""
candidate: {{kind: http, url: "http://127.0.0.1:9/never-called", name: triage,
             version: fp-3f2a9c1d7e44}}
store: {{path: recorder.duckdb, batch_size: {batch_size}}}
workers: {{bootstrap: "{bootstrap}", topic: {topic}, group: bench-daemon-{uuid.uuid4().hex[:8]}}}
daemon: {{api: {{port: 0}}, shutdown_deadline: 30s}}
""", encoding="utf-8")
    timed: tuple[float, int, float] = time_daemon(config, directory / "recorder.duckdb", count,
                                                  role="recorder")
    return timed


def print_stages(seconds: dict[str, float], total: float) -> None:
    prepare, write = seconds.get("prepare (whole)", 0.0), seconds.get("store.write", 0.0)
    decode = seconds.get("decode (handoff JSON to models)", 0.0)
    classify = seconds.get("deduplicate (store lookup)", 0.0)
    arrow = seconds.get("Arrow tables for the store", 0.0)
    rows = [
        ("poll (kafka-python fetch, orjson, RawRecord)",
         seconds.get("poll (kafka-python, orjson)", 0.0)),
        ("decode (handoff JSON to Event, Prediction)", decode),
        ("deduplicate (store lookup of event ids)", classify),
        ("rest of prepare", prepare - decode - classify),
        ("Arrow tables for the store", arrow),
        ("DuckDB inserts and commit", write - arrow),
        ("mark published", seconds.get("mark published", 0.0)),
        ("commit offsets", seconds.get("commit offsets", 0.0)),
    ]
    rows.append(("other (loop, gc)", total - sum(value for _, value in rows)))
    for name, value in rows:
        print(f"    {name:<48} {value:7.2f} s  {value / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=20_000,
                        help="records per batch (the store's batch_size; default its default)")
    parser.add_argument("--bootstrap", help="an existing broker; default: start one with "
                        "scripts/kafka-local and stop it at the end")
    parser.add_argument("--fetches", choices=sorted(FETCHES), default="recorder",
                        help="the consumer's fetch settings: the recorder's (default), "
                             "kafka-python's defaults, or big ones (" +
                             ", ".join(f"{k}={v}" for k, v in FETCHES["big"].items()) + ")")
    parser.add_argument("--gc-between-batches", action="store_true",
                        help="the cyclic garbage collector off during each batch and a young "
                             "collection after it, as a replay runs (the daemon's pump does not)")
    parser.add_argument("--daemon", action="store_true",
                        help="run the real `shadow run --role recorder` instead, timed by its "
                             "metrics (no stages)")
    parser.add_argument("--profile", action="store_true",
                        help="run the recorder under cProfile and print its top functions")
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    if args.events < 1 or args.partitions < 1 or args.batch_size < 1:
        parser.error("--events, --partitions and --batch-size must be positive")
    args.dir.mkdir(parents=True, exist_ok=True)
    with broker(args.bootstrap, "recorder-bench") as bootstrap:
        topic = f"bench-recorder-{uuid.uuid4().hex[:8]}"
        ensure_topic(bootstrap, topic, partitions=args.partitions)
        seconds, size = produce(bootstrap, topic, args.events)
        print(f"produced {args.events:,} handed-over events to {topic} ({args.partitions} "
              f"partitions) in {seconds:.1f} s; {size} bytes per event", flush=True)
        if args.daemon:
            load_before = os.getloadavg()
            directory = Path(tempfile.mkdtemp(prefix="recorder-", dir=args.dir))
            seconds, at_first, cpu = record_daemon(bootstrap, topic, args.events, directory,
                                                   args.batch_size)
            load_after = os.getloadavg()
            shutil.rmtree(directory, ignore_errors=True)
            if at_first >= args.events:
                print(f"shadow run --role recorder stored all {args.events:,} events before "
                      f"its metrics showed any: too few to time, use more --events")
                return
            rate = (args.events - at_first) / seconds
            print(f"shadow run --role recorder stored {args.events - at_first:,} events after "
                  f"its metrics first showed {at_first:,}, in {seconds:.2f} s (batches of up "
                  f"to {args.batch_size:,})")
            print(f"predictions stored/s : {rate:,.0f}  (target {TARGET:,}: "
                  f"{'met' if rate >= TARGET else 'NOT met'}; {rate / TARGET:.2f} of it)")
            done = args.events - at_first
            print(f"CPU of the recorder  : {cpu:.2f} s ({cpu / done * 1e6:.0f} us per "
                  f"prediction: {done / cpu:,.0f}/s if it had a core to itself)")
            print(f"load average         : {load_before[0]:.2f} before, "
                  f"{load_after[0]:.2f} after")
            return
        db = args.dir / f"recorder-throughput-{os.getpid()}.duckdb"
        load_before = os.getloadavg()
        options = FETCHES[args.fetches]
        total, stages, text = record(bootstrap, topic, args.events, db, args.batch_size,
                                     args.profile, options, gc_between=args.gc_between_batches)
        load_after = os.getloadavg()
        for path in (db, db.with_name(db.name + ".wal")):
            path.unlink(missing_ok=True)
    rate = args.events / total
    print(f"recorder stored {args.events:,} events, one prediction each, in {total:.2f} s "
          f"(batches of up to {args.batch_size:,}"
          f", {args.fetches} fetches"
          f"{', gc between batches' if args.gc_between_batches else ''})")
    print(f"predictions stored/s : {rate:,.0f}  (target {TARGET:,}: "
          f"{'met' if rate >= TARGET else 'NOT met'}; {rate / TARGET:.2f} of it)")
    cpu = stages.pop("CPU")
    print(f"CPU of this process  : {cpu:.2f} s, all threads ({cpu / args.events * 1e6:.0f} us "
          f"per prediction: {args.events / cpu:,.0f}/s if it had a core to itself)")
    print(f"load average         : {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("  time by stage (first poll to last commit):")
    print_stages(stages, total)
    if text:
        print(text)


if __name__ == "__main__":
    main()
