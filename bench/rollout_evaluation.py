"""How long one evaluation of the rollout gates takes on a long step.

    python bench/rollout_evaluation.py [--keys 1000000] [--new 1000] [--runs 5]

Fills a store with ``--keys`` keys in one step (one event, prediction,
outcome and comparison each, three segments of the key), lets the
controller catch up once, then times ``Controller.evaluate`` after each
batch of ``--new`` newly predicted and compared keys: its own work (bringing
the units up to date, counting them and their segments, the detector) must
follow the new rows, not the step. The reference, measured in the same run,
is one pass over the step's comparisons: ``count(*)`` and the sum of
agreements of the step's predictions joined to their comparisons, what any
evaluation that recounts the step has to read at least. It also times a
restart: a new controller replaying the step's stored units and labels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from rollout.controller import Controller  # noqa: E402
from shadow.config.rollout import RolloutSpec  # noqa: E402
from shadow.core.models import Event  # noqa: E402
from shadow.store.database import Store  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)

_FILL = [
    """INSERT INTO events SELECT 'e' || i, 'k' || i, 'k' || i, $start + to_seconds(i),
           json_object('language', ['en', 'de', 'fr'][1 + i % 3],
                       'channel', ['email', 'chat'][1 + i % 2],
                       'tier', ['free', 'pro', 'enterprise', 'team'][1 + i % 4]),
           '{}', 'bench', i::VARCHAR, $start
       FROM range($low, $high) t(i)""",
    """INSERT INTO event_segments SELECT 'e' || i, f, CASE f
           WHEN 'language' THEN ['en', 'de', 'fr'][1 + i % 3]
           WHEN 'channel' THEN ['email', 'chat'][1 + i % 2]
           ELSE ['free', 'pro', 'enterprise', 'team'][1 + i % 4] END
       FROM range($low, $high) t(i), (VALUES ('language'), ('channel'), ('tier')) s(f)""",
    """INSERT INTO outcomes (key, decided_at, outcome, actor, source, position)
       SELECT 'k' || i, $start + to_seconds(i + 60), '"a"', 'agent', 'outcomes', i::VARCHAR
       FROM range($low, $high) t(i)""",
    """INSERT INTO predictions (event_id, candidate, version, mode, output, latency_ms,
           predicted_at)
       SELECT 'e' || i, 'triage', '1', 'shadow', '"a"', 5.0, $start + to_seconds(i)
       FROM range($low, $high) t(i)""",
    """INSERT INTO comparisons (event_id, candidate, version, comparator, agree,
           outcome_decided_at, compared_at)
       SELECT 'e' || i, 'triage', '1', 'exact', hash(i) % 100 < 95,
              $start + to_seconds(i + 60), $start + to_seconds(i + 60)
       FROM range($low, $high) t(i)""",
]

_REFERENCE = """
SELECT count(*), count(*) FILTER (c.agree)
FROM predictions p JOIN comparisons c USING (event_id, candidate)
WHERE p.candidate = 'triage' AND p.version = '1' AND p.predicted_at >= $start
  AND c.comparator = 'exact'
"""

PLAN = RolloutSpec.model_validate({
    "name": "bench", "candidate": "triage", "label_window": "1m",
    "evaluate_every_compared": 1000,  # one evaluation takes in each run's 1,000 new labels
    "steps": [{"percent": 0, "min_compared": 10_000_000}, {"percent": 100}],
    "sink": {"kind": "file", "path": "unused.jsonl"},
    "gates": {"agreement": 0.9, "segments": {"floor": 0.85}},
})


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def routed(low: int, high: int) -> list[Event]:
    """The events ``fill`` writes for ``low … high``, as the pipeline holds them."""
    return [Event(event_id=f"e{i}", key=f"k{i}", occurred_at=START + timedelta(seconds=i),
                  segment={"language": ["en", "de", "fr"][i % 3],
                           "channel": ["email", "chat"][i % 2],
                           "tier": ["free", "pro", "enterprise", "team"][i % 4]})
            for i in range(low, high)]


def fill(store: Store, low: int, high: int) -> None:
    with store.transaction() as tx:
        for statement in _FILL:
            values = {"start": START, "low": low, "high": high}
            tx.execute(statement, {k: v for k, v in values.items() if f"${k}" in statement})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"rollout-{args.keys}.duckdb"
    path.unlink(missing_ok=True)
    clock = Clock()
    with Store(path) as store:
        controller = Controller(store, PLAN, rollout="bench", candidate="triage", version="1",
                                comparator="exact", now=clock)
        controller.sync()
        fill(store, 0, args.keys)
        clock.now = START + timedelta(seconds=args.keys + 120)
        started = time.perf_counter()
        controller.units.sync(controller.state)  # every label at once, not up to the next check
        controller.evaluate()
        catch_up = time.perf_counter() - started
        ours, reference = [], []
        high = args.keys
        for _ in range(args.runs):
            # As the pipeline does: it hands the events it routed to the rollout.
            controller.units.note(routed(high, high + args.new), (f"e{i}" for i in range(
                high, high + args.new)))
            fill(store, high, high + args.new)
            high += args.new
            clock.now = START + timedelta(seconds=high + 120)
            started = time.perf_counter()
            assessment = controller.evaluate()
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            compared, agreed = store.db.execute(_REFERENCE, {"start": START}).fetchall()[0]
            reference.append(time.perf_counter() - started)
        # A restart: a new controller replays the step's stored units and labels.
        again = Controller(store, PLAN, rollout="bench", candidate="triage", version="1",
                           comparator="exact", now=clock)
        started = time.perf_counter()
        replayed = again.assess()
        restart = time.perf_counter() - started
        assert replayed.stats is not None and assessment.stats is not None
        assert replayed.stats.units == assessment.stats.units
        assert assessment.stats is not None and compared == high
        units = assessment.stats.units
        # Labels come a minute after their events: the newest label ages every key past
        # the one-minute window.
        assert units.keys == units.labelled == units.mature == high, units
        checks = {c.name: c for c in assessment.promotion.checks} if assessment.promotion else {}
        assert checks["agreement"].phase.value == "pass", checks["agreement"]
        assert len([n for n in checks if n.startswith("segment")]) == 9
    print(f"command: python bench/rollout_evaluation.py --keys {args.keys} --new {args.new} "
          f"--runs {args.runs}")
    print(f"step: {high:,} keys compared, {agreed:,} agreeing; {args.new:,} new per evaluation")
    print(f"first evaluation (catching up on the whole step): {catch_up:.3f} s")
    print(f"Controller.evaluate: median {statistics.median(ours) * 1000:.1f} ms, "
          f"best {min(ours) * 1000:.1f} ms, worst {max(ours) * 1000:.1f} ms")
    print(f"restart (a new controller replays the step's units and labels): {restart:.3f} s")
    print(f"reference (one count over the step's comparisons): median "
          f"{statistics.median(reference) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
