"""A daemon is alive while it holds the store's lock, whatever its pid: a daemon killed
with SIGKILL, restarted as pid 1 in a container, starts again at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shadow.service.control import DaemonFile, DaemonLock
from tests.daemon_process import TOKEN, get, ready_api

CONFIG = """
candidate: {callable: triage:triage, name: triage, version: "1"}
store: {path: daemon.duckdb}
sources:
  events: [{kind: file, path: events.jsonl}]
daemon:
  api: {port: 0}
"""


def stale_file(store: Path, pid: int) -> None:
    DaemonFile(pid=pid, api="http://127.0.0.1:9", store=str(store),
               started_at="2026-01-01T00:00:00+00:00").write(store)


def test_a_daemon_file_whose_pid_lives_on_in_another_process_is_stale(tmp_path: Path) -> None:
    store = tmp_path / "s.duckdb"
    stale_file(store, 1)  # pid 1 always answers: in a container it is the next daemon
    assert DaemonFile.read(store) is None
    lock = DaemonLock(store)
    assert lock.acquire()
    try:
        found = DaemonFile.read(store)
        assert found is not None and found.pid == 1
        assert not DaemonLock(store).acquire()  # a second daemon is refused
    finally:
        lock.release()
    assert DaemonFile.read(store) is None and DaemonLock(store).acquire()


def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    store = tmp_path / "s.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from shadow.service.control import DaemonLock; "
         f"assert DaemonLock(Path({str(store)!r})).acquire(); print('held', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert DaemonLock.held(store)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert not DaemonLock.held(store)


def in_own_pid_namespace(directory: Path, log: str) -> subprocess.Popen[str]:
    """``shadow run`` as pid 1 of a new pid namespace, as a container runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["SHADOW_API_TOKEN"] = TOKEN
    with open(directory / log, "w", encoding="utf-8") as out:
        return subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "shadow",
             "run", "--config", "daemon.yaml"],
            cwd=directory, env=env, stdout=out, stderr=out, text=True, start_new_session=True)


def test_a_daemon_killed_as_pid_1_starts_again_as_pid_1(tmp_path: Path) -> None:
    (tmp_path / "triage.py").write_text("def triage(event):\n    return 'billing'\n",
                                        encoding="utf-8")
    (tmp_path / "events.jsonl").write_text(json.dumps(
        {"event_id": "e1", "key": "k1", "occurred_at": "2026-01-01T00:00:00Z"}) + "\n",
        encoding="utf-8")
    (tmp_path / "daemon.yaml").write_text(CONFIG, encoding="utf-8")
    db = tmp_path / "daemon.duckdb"
    first = in_own_pid_namespace(tmp_path, "first.log")
    first.log = tmp_path / "first.log"  # type: ignore[attr-defined]
    try:
        ready_api(db, process=first)
        found = DaemonFile.read(db)
        assert found is not None and found.pid == 1
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert DaemonFile.path_for(db).exists()  # killed: its file is left behind, with pid 1
    started = time.monotonic()
    second = in_own_pid_namespace(tmp_path, "second.log")
    second.log = tmp_path / "second.log"  # type: ignore[attr-defined]
    try:
        api = ready_api(db, timeout_s=30, process=second)
        assert time.monotonic() - started < 15
        assert get(api + "/ready")[0] == 200
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)
    log = (tmp_path / "second.log").read_text(encoding="utf-8")
    assert "another daemon" not in log
