"""Where a replay's time goes, stage by stage, for the columnar and the per-record pipeline.

    python bench/replay_stages.py [--events 200000] [--dir bench/out] [--per-record]

Replays the file ``bench/replay_vs_duckdb.py`` generates (it makes it on first use)
in this process, with the trivial candidate, into a fresh store, and times each stage
by wrapping the function that does it: wall seconds and this process's CPU seconds
(DuckDB's threads included). On a machine other work shares, CPU seconds are the
steadier figure. ``--per-record`` times the pipeline the columnar one replaced.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replay_vs_duckdb import HERE, generate
from trivial_candidate import label

import connectors.files
import connectors.mapping
import shadow.candidates.callable
import shadow.pipeline.columnar
import shadow.pipeline.runner
import shadow.store.database
from connectors.files import FileSource
from shadow.candidates.callable import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.store.database import Store

WALL: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)


def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            WALL[stage] += time.perf_counter() - wall
            CPU[stage] += time.process_time() - cpu
    return wrapper


def wrap(owner: Any, name: str, stage: str) -> None:
    setattr(owner, name, timed(stage, getattr(owner, name)))


WHOLE_WRITE = "whole write (Arrow, inserts, commit)"
WRITE_ARROW = "tables as Arrow within a write"
STAGES = [
    (connectors.files.FileSource, "_poll", "read lines, decode JSON (orjson)"),
    (shadow.pipeline.columnar.ColumnarPipeline, "_map", "map and check the fields"),
    (shadow.pipeline.runner, "map_records", "map and check the fields"),
    (shadow.pipeline.columnar, "stored_before", "deduplicate"),
    (shadow.pipeline.runner.Pipeline, "_classify", "deduplicate"),
    (shadow.pipeline.columnar, "events_of", "build Event objects for the candidate"),
    (shadow.pipeline.columnar, "events_table", "events as an Arrow table"),
    (shadow.candidates.callable.CallableCandidate, "predict", "call the candidate"),
    (shadow.pipeline.runner, "with_action_violations", "check the predictions' actions"),
    (shadow.pipeline.columnar, "arrow_tables", "other tables as Arrow (predictions, ...)"),
    (shadow.store.database, "arrow_tables", WRITE_ARROW),
    (shadow.store.database, "gathered", "batches' tables gathered into one"),
    (shadow.store.database, "insert", "DuckDB inserts"),
    (shadow.store.database.Store, "write", WHOLE_WRITE),
    (shadow.store.database.Store, "write_tables", WHOLE_WRITE),
    (shadow.pipeline.runner.Pipeline, "run", "whole replay"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    parser.add_argument("--per-record", action="store_true")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    events = args.dir / f"events-{args.events}.jsonl"
    if not events.exists():
        generate(events, args.events)
    for owner, name, stage in STAGES:
        wrap(owner, name, stage)
    kind = (shadow.pipeline.runner.Pipeline if args.per_record
            else shadow.pipeline.columnar.ColumnarPipeline)
    db = args.dir / "stages.duckdb"
    db.unlink(missing_ok=True)
    with Store(db) as store, CallableCandidate(label, name="label", version="1") as candidate:
        summary = kind(store, candidate, build_comparator(ExactSpec())).run([FileSource(events)])
    if (summary.events_stored, summary.predictions) != (args.events, args.events):
        raise SystemExit(f"the replay stored {summary.events_stored:,} events and "
                         f"{summary.predictions:,} predictions, expected {args.events:,} each")
    db.unlink(missing_ok=True)
    total_wall, total_cpu = WALL["whole replay"], CPU["whole replay"]
    # A write's own work is the whole write less what the stages within it took.
    for times in (WALL, CPU):
        within = times.pop(WRITE_ARROW, 0.0)
        times["other tables as Arrow (predictions, ...)"] += within
        times["commit"] = (times.pop(WHOLE_WRITE) - within - times["DuckDB inserts"]
                           - times["batches' tables gathered into one"])
    named_wall = sum(v for k, v in WALL.items() if k != "whole replay")
    named_cpu = sum(v for k, v in CPU.items() if k != "whole replay")
    WALL["the rest (loop, summary, compare, run record)"] = total_wall - named_wall
    CPU["the rest (loop, summary, compare, run record)"] = total_cpu - named_cpu
    print(f"{kind.__name__}, {args.events:,} events")
    print(f"{'stage':<48} {'wall s':>8} {'share':>6} {'CPU s':>8} {'CPU µs/event':>12}")
    order = [stage for stage in WALL if stage != "whole replay"] + ["whole replay"]
    for stage in order:
        wall, cpu = WALL[stage], CPU[stage]
        print(f"{stage:<48} {wall:8.2f} {100 * wall / total_wall:5.0f}% {cpu:8.2f} "
              f"{1e6 * cpu / args.events:12.1f}")


if __name__ == "__main__":
    main()
