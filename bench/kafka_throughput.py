# mypy: disable-error-code="attr-defined,unused-ignore"
"""Kafka pipeline throughput against a plain kafka-python consumer, in the same run.

    python bench/kafka_throughput.py [--events 1000000] [--bootstrap HOST:PORT]
                                     [--check-crcs on|off|both] [--per-record] [--profile]
                                     [--daemon]

Without ``--bootstrap`` a broker of its own is started with ``scripts/kafka-local`` (free
ports, a fresh run directory) and stopped at the end.

Creates a fresh topic of one partition and produces N small canonical events
(event_id, key, occurred_at, segment, a payload of about 100 bytes) with a
batching kafka-python producer (acks=1). Then, on that topic, for each CRC
setting asked for:

1. the reference: a plain ``KafkaConsumer`` (its own fresh group, from the
   earliest offset) that polls and ``orjson.loads`` every value until it has N;
2. the shadow pipeline: ``ColumnarPipeline`` (what ``shadow replay`` runs) with a
   trivial in-process candidate over a ``KafkaSource`` (its own fresh group,
   ``Start.EARLIEST``) into a fresh DuckDB file under ``bench/out/``, timed until the
   last batch is stored and its offsets committed. It reads each poll as one
   ``KafkaBatch``. With ``--per-record`` the per-record ``Pipeline`` is timed too,
   on the same topic, after it.
3. with ``--daemon`` (and ``check_crcs`` on, kafka-python's default), the real
   ``shadow run`` with the same candidate and a Kafka event source on the topic (its own
   fresh group, ``start: earliest``, the same fetch settings as ``options``), timed by its
   metrics from the first events they show stored to the last
   (``daemon_run.time_daemon``).

Both consumers get exactly the same fetch settings (``CONSUMER_TUNING``). The
pipeline's time is also split by stage (each stage's function wrapped; the
wrappers run once per batch, not per event). With ``--profile`` the pipeline
additionally runs under cProfile (slower: use a small ``--events``), and the
top functions are printed.

``check_crcs`` is a setting of its own because kafka-python verifies each
record batch's CRC-32C, in C with the ``crc32c`` package (a dependency of this
project) and otherwise in pure Python at about 5 MB/s, where it dominates both
consumers; the run prints which one it used.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.record import util as record_util

import shadow.pipeline.columnar as columnar_module
import shadow.pipeline.runner as runner_module
import shadow.store.database as store_module
from connectors.kafka import KafkaSource, Start
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.pipeline.columnar import ColumnarPipeline
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from daemon_run import time_daemon  # noqa: E402  (bench/ is not a package)
from local_broker import broker  # noqa: E402
from stage_timer import Stages  # noqa: E402
from trivial_candidate import label  # noqa: E402

BATCH_SIZE = 20_000
IDLE_S = 2.0
# The same fetch settings for both consumers: big fetches, big polls.
CONSUMER_TUNING: dict[str, Any] = {
    "max_poll_records": BATCH_SIZE,
    "fetch_max_bytes": 64 * 2**20,
    "max_partition_fetch_bytes": 16 * 2**20,
    "receive_buffer_bytes": 4 * 2**20,
}
WORDS = ("invoice refund password login error crash delivery parcel cancel account "
         "please help urgent since yesterday customer order payment team").split()


# -- broker and topic ------------------------------------------------------------

def create_topic(bootstrap: str) -> str:
    topic = f"bench-throughput-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    return topic


def event_bytes(i: int, rnd: random.Random, base: datetime) -> bytes:
    return orjson.dumps({
        "event_id": f"evt-{i:08d}",
        "key": f"ticket-{i:08d}",
        "occurred_at": (base + timedelta(seconds=i)).isoformat(),
        "segment": {"channel": rnd.choice(("email", "chat", "web", "phone")),
                    "tier": rnd.choice(("free", "pro", "enterprise"))},
        "payload": {"subject": " ".join(rnd.choices(WORDS, k=8)),
                    "priority": rnd.choice(("low", "normal", "high")),
                    "customer_id": rnd.randrange(10_000)},
    })


def produce(bootstrap: str, topic: str, count: int, seed: int = 1) -> tuple[float, int, int]:
    """Returns seconds, total value bytes and total payload bytes."""
    rnd = random.Random(seed)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50,
                             batch_size=512 * 1024,
                             max_request_size=8 * 2**20)
    value_bytes = payload_bytes = 0
    started = time.perf_counter()
    for i in range(count):
        value = event_bytes(i, rnd, base)
        value_bytes += len(value)
        if i < 1000:
            payload_bytes += len(orjson.dumps(orjson.loads(value)["payload"]))
        producer.send(topic, key=f"ticket-{i:08d}".encode(), value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed, value_bytes, payload_bytes * count // min(count, 1000)


# -- the reference: a plain consumer ---------------------------------------------

def time_raw(bootstrap: str, topic: str, count: int, tuning: dict[str, Any]
             ) -> tuple[float, float]:
    """Returns seconds and CPU seconds of this process until every record was read."""
    loads = orjson.loads
    started = time.perf_counter()  # construction and group join are included, as for the source
    cpu_started = time.process_time()
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap,
                             group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
                             enable_auto_commit=False, auto_offset_reset="earliest", **tuning)
    read, last_data = 0, time.perf_counter()
    while read < count:
        batches = consumer.poll(timeout_ms=500, max_records=BATCH_SIZE)
        for messages in batches.values():
            for message in messages:
                loads(message.value)
            read += len(messages)
        if batches:
            last_data = time.perf_counter()
        elif time.perf_counter() - last_data > 30:
            raise SystemExit(f"raw consumer stalled at {read:,} of {count:,} records")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    consumer.close(autocommit=False)
    if read != count:
        raise SystemExit(f"raw consumer read {read:,} records, expected {count:,}")
    return elapsed, cpu


# -- the pipeline -----------------------------------------------------------------

class TimedKafkaSource(KafkaSource):
    """A KafkaSource that notes when its last commit (so its last stored batch) ended.

    The pipeline is timed until the store holds every event and their offsets
    are committed, not until ``Pipeline.run`` returns: the run only ends after
    ``idle_s`` without records, and then compares and records the run. Noting
    the time of the last commit is exact, where subtracting ``idle_s`` from the
    run's duration would also count the last empty poll's partial timeout and
    the end-of-run work.
    """

    def __init__(self, *, stages: Stages, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stages = stages
        self.last_commit_at: float | None = None
        self.cpu_at_commit = 0.0
        self.stages_at_commit: dict[str, float] = {}
        self._fetch = stages.wrap("source", self._fetch)  # type: ignore[method-assign]
        self._poll = stages.wrap("source records", self._poll)  # type: ignore[method-assign]

    def _open(self) -> None:
        super()._open()
        consumer = self._consumer
        assert consumer is not None
        consumer.poll = self.stages.wrap("kafka-python poll", consumer.poll)  # type: ignore[method-assign]

    def commit(self, position: str) -> None:
        started = time.perf_counter()
        super().commit(position)
        self.last_commit_at = time.perf_counter()
        self.cpu_at_commit = time.process_time()
        self.stages.seconds["commit offsets"] += self.last_commit_at - started
        # The stages as of the last stored batch: the idle polls after it are not counted.
        self.stages_at_commit = dict(self.stages.seconds)


def time_pipeline(
    bootstrap: str, topic: str, count: int, tuning: dict[str, Any], db_path: Path,
    *, columnar: bool = True, profile: bool = False,
) -> tuple[float, float, dict[str, float], str | None]:
    """Returns seconds until stored, seconds of the whole run, stage seconds, profile text."""
    db_path.unlink(missing_ok=True)
    stages = Stages()
    source = TimedKafkaSource(
        stages=stages, bootstrap=bootstrap, topics=[topic],
        group_id=f"bench-pipeline-{uuid.uuid4().hex[:8]}", start=Start.EARLIEST,
        poll_timeout_s=0.5, idle_s=IDLE_S, options=dict(tuning),
    )
    candidate = CallableCandidate(label, name="trivial")
    candidate.predict = stages.wrap("candidate", candidate.predict)  # type: ignore[method-assign]
    wrapped = [(runner_module, "map_records", "map + validate"),
               (store_module, "arrow_tables", "arrow tables"),
               (columnar_module.ColumnarPipeline, "_map_kafka", "decode + map"),
               (columnar_module.ColumnarPipeline, "_split", "deduplicate"),
               (columnar_module, "events_of", "Event objects"),
               (columnar_module, "events_table", "events arrow table")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]
    for owner, name, stage in wrapped:
        setattr(owner, name, stages.wrap(stage, getattr(owner, name)))
    profiler = cProfile.Profile() if profile else None
    try:
        with Store(db_path) as store:
            kind = ColumnarPipeline if columnar else Pipeline
            replay = kind(store, candidate, build_comparator(ExactSpec()), batch_size=BATCH_SIZE)
            replay._classify = stages.wrap("deduplicate", replay._classify)  # type: ignore[method-assign]
            store.write = stages.wrap("store.write", store.write)  # type: ignore[method-assign]
            started, cpu_started = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            summary = replay.run([source])
            if profiler:
                profiler.disable()
            finished = time.perf_counter()
            stored = (store.count("events"), store.count("predictions"))
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
    if summary.events_stored != count or stored != (count, count) or summary.dead_letters:
        raise SystemExit(f"pipeline stored {stored[0]:,} events and {stored[1]:,} predictions "
                         f"({summary.dead_letters} dead letters), expected {count:,} each")
    assert source.last_commit_at is not None
    text = None
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        text = out.getvalue()
    seconds = dict(source.stages_at_commit)
    seconds["total"] = source.last_commit_at - started
    seconds["cpu"] = source.cpu_at_commit - cpu_started
    return source.last_commit_at - started, finished - started, seconds, text


def print_stages(seconds: dict[str, float]) -> None:
    total = seconds["total"]
    poll, source = seconds.get("kafka-python poll", 0.0), seconds.get("source", 0.0)
    write, arrow = seconds.get("store.write", 0.0), seconds.get("arrow tables", 0.0)
    records = seconds.get("source records", source)
    rows = [
        ("kafka-python poll (fetch, record parsing, CRC)", poll),
        ("KafkaSource: the poll's messages", source - poll),
        ("per-record: orjson + RawRecord + metadata", records - source),
        ("per-record: map + validate into Event (pydantic)", seconds.get("map + validate", 0.0)),
        ("columnar: decode, map and check the fields", seconds.get("decode + map", 0.0)),
        ("deduplicate", seconds.get("deduplicate", 0.0)),
        ("columnar: Event objects for the candidate", seconds.get("Event objects", 0.0)),
        ("candidate (call, JSON check, Prediction)", seconds.get("candidate", 0.0)),
        ("columnar: events as an Arrow table", seconds.get("events arrow table", 0.0)),
        ("Arrow tables for the store (columnar: the others)", arrow),
        ("DuckDB inserts and commit", write - arrow),
        ("commit offsets", seconds.get("commit offsets", 0.0)),
    ]
    rows.append(("other (loop, gc, group join)",
                 total - sum(value for _, value in rows)))
    for name, value in rows:
        if value or name.startswith("other"):
            print(f"    {name:<52} {value:7.2f} s  {value / total:6.1%}")


def time_daemon_run(bootstrap: str, topic: str, count: int, directory: Path,
                    tuning: dict[str, Any]) -> tuple[float, int, float]:
    """``shadow run`` reading ``topic`` into a fresh store under ``directory``, timed by
    :func:`daemon_run.time_daemon`."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "daemon.yaml"
    config.write_text(f"""
version: 1
candidate: {{callable: "trivial_candidate:label", name: trivial}}
comparator: {{kind: exact}}
store: {{path: daemon.duckdb, batch_size: {BATCH_SIZE}}}
sources:
  events:
    - {{kind: kafka, bootstrap: "{bootstrap}", topics: [{topic}],
        group: bench-daemon-{uuid.uuid4().hex[:8]}, start: earliest,
        options: {orjson.dumps(tuning).decode()}}}
daemon: {{api: {{port: 0}}, shutdown_deadline: 30s}}
""", encoding="utf-8")
    timed: tuple[float, int, float] = time_daemon(config, directory / "daemon.duckdb", count,
                                                  path=[HERE])
    return timed


def print_daemon(bootstrap: str, topic: str, count: int, directory: Path,
                 tuning: dict[str, Any], raw_rate: float) -> None:
    seconds, at_first, cpu = time_daemon_run(bootstrap, topic, count, directory, tuning)
    done = count - at_first
    if done <= 0:
        print(f"  shadow run stored all {count:,} events before its metrics showed any: "
              f"use more --events")
        return
    rate = done / seconds
    print(f"  shadow run (daemon)          : {seconds:7.2f} s  {rate:>9,.0f} events/s"
          f"  (the last {done:,} events; CPU {cpu:.2f} s, {cpu / done * 1e6:.1f} µs per event)")
    print(f"  ratio daemon / plain         : {rate / raw_rate:7.3f}")


# -- main ---------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--bootstrap", help="an existing broker; default: start one on free "
                        "ports with scripts/kafka-local and stop it at the end")
    parser.add_argument("--check-crcs", choices=("on", "off", "both"), default="both",
                        help="kafka-python's check_crcs for both consumers (default: both, "
                             "one pair of measurements each)")
    parser.add_argument("--per-record", action="store_true",
                        help="also time the per-record Pipeline, after the columnar one")
    parser.add_argument("--profile", action="store_true",
                        help="also run the pipeline under cProfile and print its top functions")
    parser.add_argument("--daemon", action="store_true",
                        help="also time the real `shadow run` reading the topic, by its metrics")
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    with broker(args.bootstrap, "throughput-bench") as bootstrap:
        topic = create_topic(bootstrap)
        seconds, value_bytes, payload_bytes = produce(bootstrap, topic, args.events)
        print(f"produced {args.events:,} events to {topic} in {seconds:.1f} s "
              f"({args.events / seconds:,.0f}/s); {value_bytes / args.events:.0f} bytes per "
              f"value, payload {payload_bytes / args.events:.0f} bytes", flush=True)
        crc_c = record_util.crc32c_c is not None
        print(f"kafka-python CRC-32C: {'C (crc32c package)' if crc_c else 'pure Python'}")
        settings = {"on": [True], "off": [False], "both": [True, False]}[args.check_crcs]
        db_path = args.dir / f"kafka-throughput-{os.getpid()}.duckdb"
        kinds = [True, False] if args.per_record else [True]
        for check_crcs in settings:
            tuning = dict(CONSUMER_TUNING, check_crcs=check_crcs)
            raw, raw_cpu = time_raw(bootstrap, topic, args.events, tuning)
            raw_rate = args.events / raw
            print(f"check_crcs={check_crcs}:")
            print(f"  plain KafkaConsumer + orjson : {raw:7.2f} s  {raw_rate:>9,.0f} events/s"
                  f"  (CPU {raw_cpu:.2f} s, {raw_cpu / args.events * 1e6:.1f} µs per event)")
            for columnar in kinds:
                stored, whole, stages, _ = time_pipeline(bootstrap, topic, args.events, tuning,
                                                         db_path, columnar=columnar)
                rate = args.events / stored
                kind = "columnar" if columnar else "per-record"
                cpu = stages["cpu"]
                print(f"  {kind} pipeline until stored: {stored:7.2f} s  {rate:>9,.0f} events/s"
                      f"  (CPU {cpu:.2f} s, {cpu / args.events * 1e6:.1f} µs per event; run "
                      f"{whole:.2f} s with the {IDLE_S:.0f} s idle wait)")
                print(f"  ratio pipeline / plain       : {rate / raw_rate:7.3f}"
                      f"  (target 0.60: {'met' if rate >= 0.6 * raw_rate else 'NOT met'})")
                print(f"  store: {args.events:,} events and {args.events:,} predictions; "
                      "pipeline stages:")
                print_stages(stages)
                sys.stdout.flush()
            if args.daemon and check_crcs:
                directory = Path(tempfile.mkdtemp(prefix="kafka-daemon-", dir=args.dir))
                print_daemon(bootstrap, topic, args.events, directory, tuning, raw_rate)
                shutil.rmtree(directory, ignore_errors=True)
            if args.profile:
                _, _, _, text = time_pipeline(bootstrap, topic, args.events, tuning, db_path,
                                              profile=True)
                print(f"  cProfile of a second pipeline run (check_crcs={check_crcs}):")
                print(text)
        db_path.unlink(missing_ok=True)
        Path(str(db_path) + ".wal").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
