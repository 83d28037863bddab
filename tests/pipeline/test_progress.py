"""Replay progress as a person sees it: a bar in a terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from shadow.demo import generate


def run_in_terminal(command: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; returns exit code and what it showed."""
    main, child = pty.openpty()
    process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=child,
                               stderr=child, env={**os.environ, "COLUMNS": "120"})
    os.close(child)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed: the process has ended
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(main)
    return process.wait(timeout=10), shown.decode("utf-8", "replace")


def test_replay_in_a_terminal_draws_a_progress_bar(tmp_path: Path) -> None:
    files = generate(tmp_path, events=3000)

    code, shown = run_in_terminal(
        [sys.executable, "-m", "shadow", "replay", str(files.events),
         "--candidate", "shadow.demo.candidate:classify", "--db", str(tmp_path / "s.duckdb"),
         "--write-batch", "500"],
        cwd=tmp_path,
    )

    assert code == 0, shown
    assert "━" in shown  # the bar itself
    assert "100%" in shown
    assert f"records {files.events_written:,}" in shown
    assert "events read" in shown and "dead letters" in shown
