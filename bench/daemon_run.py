"""The real ``shadow run`` as a subprocess, timed by its metrics while it stores events.

For the benchmarks that measure a daemon (``recorder_throughput.py --daemon``,
``kafka_throughput.py --daemon``): the daemon is asked its metrics once a second (each
scrape counts the store's tables, so the benchmark asks no more often than Prometheus
would), and timed from the first events they show stored to the last.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from stage_timer import cpu_seconds

from shadow.service.control import DaemonFile

TOKEN = "bench-daemon-token"
SCRAPE_S = 1.0
WITHIN_S = 600


def time_daemon(config: Path, db: Path, count: int, *, role: str | None = None,
                path: Sequence[Path] = ()) -> tuple[float, int, float]:
    """Run ``shadow run`` on ``config`` (its store at ``db``) until it has stored ``count``
    events; returns the seconds from the first events its metrics showed to the last, the
    events stored at that first sight, and the CPU the process used meanwhile.

    ``path`` goes first on the daemon's ``PYTHONPATH`` (where a candidate's module is).
    Its output goes to ``daemon.log`` beside ``config``. The daemon is stopped by SIGTERM.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["SHADOW_API_TOKEN"] = TOKEN
    env["PYTHONPATH"] = os.pathsep.join([*map(str, path), env.get("PYTHONPATH", "")])
    log_path = config.with_name("daemon.log")
    command = [sys.executable, "-m", "shadow", "run", "--config", str(config)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command + (["--role", role] if role else []),
                                   cwd=config.parent, env=env, stdout=log, stderr=log)
    try:
        first: tuple[float, int, float] | None = None
        deadline = time.monotonic() + WITHIN_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"the daemon exited with {process.returncode}:\n"
                                 + log_path.read_text()[-3000:])
            stored = stored_events(db)
            now, cpu = time.perf_counter(), cpu_seconds(process.pid)
            if stored > 0 and first is None:
                first = (now, stored, cpu)
            if stored >= count:
                assert first is not None
                return now - first[0], first[1], cpu - first[2]
            time.sleep(SCRAPE_S)
        raise SystemExit(f"the daemon had not stored {count:,} events within {WITHIN_S} s")
    finally:
        stop(process, 60)


def stop(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop ``process`` as its operator would: SIGTERM, then a kill after ``timeout_s``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stored_events(db: Path) -> int:
    """Events stored, as the daemon's metrics say (0 while it does not answer yet)."""
    found = DaemonFile.read(db)
    if found is None:
        return 0
    request = urllib.request.Request(found.api + "/metrics")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return 0
    match = re.search(r"^shadow_events_total (\S+)$", text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0
