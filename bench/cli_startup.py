"""How long ``shadow --help`` takes, against bare Python started the same way.

    python bench/cli_startup.py [--runs 20]

Each command is a fresh process (what a person typing it waits for), run alternately
``--runs`` times; the median and the best are printed. The references, in the same run:
``python -c pass`` (the interpreter's own start) and ``python -c "import argparse"``
(the floor of any command line parsed with argparse). Also ``shadow --version`` and
``shadow rollout status --help``, which parse without running anything, and the
packages ``shadow --help`` imports that are neither the standard library nor the CLI's own.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    'python -c "import argparse"': ["-c", "import argparse"],
    "shadow --help": ["-m", "shadow", "--help"],
    "shadow --version": ["-m", "shadow", "--version"],
    "shadow rollout status --help": ["-m", "shadow", "rollout", "status", "--help"],
}


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def imported(args: list[str]) -> set[str]:
    """The modules a run imports, from ``-X importtime``."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line} - {"imported package"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        timed(command)  # the first run fills the page cache and writes the .pyc files
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            times[name].append(timed(command))
    print(f"command: python bench/cli_startup.py --runs {args.runs}")
    print(f"python {sys.version.split()[0]}, {args.runs} runs each, alternating")
    width = max(map(len, COMMANDS))
    for name, seconds in times.items():
        print(f"{name:<{width}}  median {statistics.median(seconds) * 1000:6.0f} ms"
              f"   best {min(seconds) * 1000:6.0f} ms")
    help_median = statistics.median(times["shadow --help"])
    floor = statistics.median(times['python -c "import argparse"'])
    print(f"shadow --help beyond the argparse floor: {(help_median - floor) * 1000:.0f} ms")
    foreign = sorted(foreign_packages(imported(COMMANDS["shadow --help"])))
    print(f"shadow --help: imports {len(foreign)} packages beyond the standard library and "
          f"the CLI" + (f": {', '.join(foreign)}" if foreign else ""))


def foreign_packages(modules: set[str]) -> set[str]:
    """Top-level packages of ``modules`` that are neither the standard library nor the CLI
    (``shadow.cli``, with ``shadow.core.errors`` and the packages above them)."""
    ours = {"shadow", "shadow.core", "shadow.core.errors", "sitecustomize"}
    return {m.split(".")[0] if not m.startswith("shadow.") else m for m in modules
            if m.split(".")[0] not in sys.stdlib_module_names and not m.startswith("_")
            and not m.startswith("shadow.cli") and m not in ours}


if __name__ == "__main__":
    main()
