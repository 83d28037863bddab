"""How long the owner's report takes over a store of a million compared predictions.

    python bench/report_speed.py [--compared 1000000] [--candidates 2] [--dir bench/out]

Generates the store with DuckDB alone (``INSERT … SELECT`` from ``range()``,
straight into the schema's tables; no candidate runs), then times
building the owner report (``owner_report``) and ``owner_markdown`` on it, best of three, and
prints the figures with the command that produced them. The target is
under 5 s for 1,000,000 compared predictions.

The data: events over 30 days in 3 × 4 segments, label outputs (8 labels)
with confidence, cost and latency, 1 % errors (two kinds), 0.5 % of the other
predictions violating a check, outcomes for every event, and a second outcome
from another person for 5 % of the keys.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from shadow.config.file import parse_config  # noqa: E402
from shadow.reports.build import full_report, render_report  # noqa: E402
from shadow.reports.options import OwnerOptions  # noqa: E402
from shadow.reports.owner import owner_report  # noqa: E402
from shadow.reports.render import owner_markdown  # noqa: E402
from shadow.store.database import Store  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
LABELS = "['billing','login','refund','shipping','cancel','account','delivery','other']"

_EVENTS = f"""
INSERT INTO events (event_id, key, routing_key, occurred_at, segment, payload, source, position)
SELECT 'e' || i, 't' || i, 't' || i,
       TIMESTAMPTZ '{START.isoformat()}' + to_seconds(CAST(i * 2592000 // $n AS BIGINT)),
       json_object('channel', ['chat','email','phone'][i % 3 + 1],
                   'tier', ['free','pro','team','enterprise'][i % 4 + 1]),
       json_object('subject', 'ticket ' || i,
                   'requester', json_object('email', 'user' || i || '@example.com')),
       'bench', CAST(i AS VARCHAR)
FROM range($n) r(i)
"""

_SEGMENTS = """
INSERT INTO event_segments
SELECT event_id, s.key, s.value ->> '$' FROM events, json_each(segment) s
"""

_OUTCOMES = f"""
INSERT INTO outcomes (key, decided_at, outcome, actor, source, position)
SELECT 't' || i, TIMESTAMPTZ '{START.isoformat()}' + to_seconds(CAST(i * 2592000 // $n AS BIGINT))
         + INTERVAL 2 HOUR,
       to_json({LABELS}[i % 8 + 1]), 'agent' || (i % 7), 'bench', 'o' || i
FROM range($n) r(i)
UNION ALL
SELECT 't' || i, TIMESTAMPTZ '{START.isoformat()}' + to_seconds(CAST(i * 2592000 // $n AS BIGINT))
         + INTERVAL 1 HOUR,
       to_json({LABELS}[(i + CAST(i % 3 = 0 AS INTEGER)) % 8 + 1]), 'agent' || (i % 7 + 1),
       'bench', 'p' || i
FROM range($n) r(i) WHERE i % 20 = 0
"""

_PREDICTIONS = f"""
INSERT INTO predictions (event_id, candidate, version, mode, output, confidence, latency_ms,
                         error_type, error_message, predicted_at, cost, error_kind, violations)
SELECT 'e' || i, 'candidate-' || c, CAST(c AS VARCHAR), 'shadow',
       CASE WHEN failed THEN NULL ELSE to_json(
           {LABELS}[(i + CAST(hash(i, c) % 100 < 8 + 4 * c AS INTEGER)) % 8 + 1]) END,
       CASE WHEN failed THEN NULL ELSE (hash(i, c, 1) % 1000) / 1000.0 END,
       5.0 + (hash(i, c, 2) % 100000) / 100.0 * (1 + c),
       CASE WHEN failed THEN ['TimeoutError', 'ValueError'][i % 2 + 1] END,
       CASE WHEN failed THEN 'failed on ' || i END,
       TIMESTAMPTZ '{START.isoformat()}' + to_seconds(CAST(i * 2592000 // $n AS BIGINT)),
       0.0004 * (1 + c), CASE WHEN failed THEN 'exception' END,
       CASE WHEN NOT failed AND hash(i, c, 4) % 200 = 0
            THEN ['pii:email matched at output.reply'] END
FROM (SELECT i, c, hash(i, c, 3) % 100 = 0 AS failed
      FROM range($n) r(i), range($candidates) k(c))
"""

_COMPARISONS = f"""
INSERT INTO comparisons (event_id, candidate, version, comparator, agree, outcome_decided_at,
                         compared_at)
SELECT p.event_id, p.candidate, p.version, 'exact', p.output = o.outcome,
       o.decided_at, TIMESTAMPTZ '{START.isoformat()}' + INTERVAL 31 DAY
FROM predictions p JOIN events e USING (event_id)
JOIN outcomes o ON o.key = e.key AND o.position LIKE 'o%'
WHERE p.error_type IS NULL
"""


def generate(path: Path, compared: int, candidates: int) -> None:
    """A store with about ``compared`` compared predictions over ``candidates`` candidates."""
    # Errored predictions are not compared: about 1 % more events than compared / candidates.
    events = round(compared / candidates / 0.99)
    params = {"n": events, "candidates": candidates}
    with Store(path) as store:
        db = store.db
        for sql in (_EVENTS, _OUTCOMES, _PREDICTIONS):
            db.execute(sql, {k: v for k, v in params.items() if f"${k}" in sql})
        for sql in (_SEGMENTS, _COMPARISONS):
            db.execute(sql)
        db.execute("CHECKPOINT")


def best_of(runs: int, store: Store, options: OwnerOptions) -> tuple[float, float, str]:
    build, render, text = float("inf"), float("inf"), ""
    for _ in range(runs):
        started = time.perf_counter()
        report = owner_report(store, options)
        built = time.perf_counter()
        text = owner_markdown(report)
        done = time.perf_counter()
        build, render = min(build, built - started), min(render, done - built)
    return build, render, text


def whole_report(runs: int, store: Store) -> tuple[float, float, int]:
    """What ``shadow report --format html`` does: the core and owner sections, then HTML."""
    config = parse_config({"report": {"redact": ["requester.email"], "daily_volume": 50_000,
                                      "max_p95_latency_ms": 2_000, "currency": "$"}})
    build, render, size = float("inf"), float("inf"), 0
    for _ in range(runs):
        started = time.perf_counter()
        report = full_report(store, config)
        built = time.perf_counter()
        size = len(render_report(report, "html"))
        done = time.perf_counter()
        build, render = min(build, built - started), min(render, done - built)
    return build, render, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compared", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="reuse the store if it exists")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"report-{args.compared}-{args.candidates}.duckdb"
    if not (args.keep and path.exists()):
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        generate(path, args.compared, args.candidates)
        print(f"generated {path} in {time.perf_counter() - started:.1f} s")
    options = OwnerOptions(prediction_label=None, redact=("requester.email",),
                           daily_volume=50_000.0, max_p95_latency_ms=2_000.0)
    with Store(path, read_only=True) as store:
        compared = store.count("comparisons")
        build, render, text = best_of(args.runs, store, options)
        whole, html, size = whole_report(args.runs, store)
    print(f"command: python bench/report_speed.py --compared {args.compared} "
          f"--candidates {args.candidates}")
    print(f"compared predictions: {compared:,} over {args.candidates} candidates")
    print(f"build_owner_report: {build:.2f} s (best of {args.runs})")
    print(f"owner_markdown:     {render * 1000:.2f} ms (best of {args.runs})")
    print(f"total:              {build + render:.2f} s (target < 5 s)")
    print(f"markdown: {len(text.splitlines())} lines")
    print(f"shadow report --format html: report {whole:.2f} s + HTML {html * 1000:.1f} ms = "
          f"{whole + html:.2f} s (best of {args.runs}; {size:,} bytes; target < 5 s)")


if __name__ == "__main__":
    main()
