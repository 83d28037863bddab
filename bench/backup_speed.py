"""How long ``shadow backup`` takes over a store of a million compared predictions.

    python bench/backup_speed.py [--compared 1000000] [--candidates 2] [--dir bench/out]

Generates the store as ``report_speed.py`` does, then times
:func:`shadow.store.backup.backup` (a copy as of one moment, checked table by table)
against the reference measured in the same run: copying the checkpointed file
with ``shutil.copyfile``, which is what a backup of a stopped daemon would be.
Best of ``--runs``; the daemon's intake waits for the backup's time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from report_speed import generate  # noqa: E402

from shadow.store.backup import backup  # noqa: E402
from shadow.store.database import Store  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compared", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=HERE / "out")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = (args.dir / f"backup-{args.compared}-{args.candidates}.duckdb").absolute()
    path.unlink(missing_ok=True)
    generate(path, args.compared, args.candidates)
    copy, reference = args.dir.absolute() / "backup-copy.duckdb", args.dir / "file-copy.duckdb"
    ours = plain = float("inf")
    with Store(path, read_only=True) as store:
        rows = store.count("comparisons")
        for _ in range(args.runs):
            copy.unlink(missing_ok=True)
            started = time.perf_counter()
            done = backup(store, copy)
            ours = min(ours, time.perf_counter() - started)
    for _ in range(args.runs):
        reference.unlink(missing_ok=True)
        started = time.perf_counter()
        shutil.copyfile(path, reference)
        plain = min(plain, time.perf_counter() - started)
    assert done.rows["comparisons"] == rows
    size, copied = path.stat().st_size, done.size_bytes
    print(f"command: python bench/backup_speed.py --compared {args.compared} "
          f"--candidates {args.candidates}")
    print(f"store: {size / 1e6:,.1f} MB, {rows:,} compared predictions, "
          f"{done.rows['events']:,} events")
    print(f"shadow backup:     {ours:.2f} s (best of {args.runs}; copy {copied / 1e6:,.1f} MB)")
    print(f"file copy (cold):  {plain:.2f} s (best of {args.runs})")
    print(f"ratio backup / file copy: {ours / plain:.1f}")
    copy.unlink(missing_ok=True)
    reference.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
