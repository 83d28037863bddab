"""The daemon as a subprocess: start it on a configuration, find its API, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shadow.service.control import DaemonFile
from tests.waiting import wait_until

TOKEN = "t0ken-for-tests"


def get(url: str, *, token: str | None = None, method: str = "GET",
        body: dict[str, Any] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def start_daemon(config: Path, log_name: str, *, token: str | None = TOKEN,
                 command: tuple[str, ...] = ("run",)) -> subprocess.Popen[str]:
    """``shadow run`` (or another ``command``) on ``config`` in its directory, logging to
    ``log_name`` there."""
    directory = config.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    if token is not None:
        env["SHADOW_API_TOKEN"] = token
    # Logs go to a file: a pipe nobody reads while the daemon runs would fill and block it.
    log = open(directory / log_name, "w", encoding="utf-8")  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shadow", *command, "--config", str(config)],
            cwd=directory, env=env, stdout=log, stderr=log, text=True)
    finally:
        log.close()
    process.log = directory / log_name  # type: ignore[attr-defined]
    return process


def ready_api(db: Path, timeout_s: float = 60, *,
              process: subprocess.Popen[str] | None = None) -> str:
    """The API address of the daemon running for ``db``, once it answers ready.

    With the daemon's ``process``, its exit ends the wait at once, and a failure shows
    its log (when it has one, as :func:`start_daemon` gives it).
    """
    def answering() -> str | None:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the daemon exited with {process.returncode} before it "
                                 f"answered ready\n{log_tail(process)}")
        found = DaemonFile.read(db)
        return found.api if found is not None and get(found.api + "/ready")[0] == 200 else None

    return wait_until(answering, timeout_s=timeout_s, interval_s=0.2,
                      what=f"the daemon of {db.name} to answer ready",
                      details=None if process is None else lambda: log_tail(process))


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return process.returncode, finished(process)


def finished(process: subprocess.Popen[str]) -> str:
    path: Path = process.log  # type: ignore[attr-defined]
    return path.read_text(encoding="utf-8")


def log_tail(process: subprocess.Popen[str], chars: int = 3000) -> str:
    """The end of the daemon's log, if it was started with one."""
    path: Path | None = getattr(process, "log", None)
    return "(no log)" if path is None else path.read_text(encoding="utf-8")[-chars:]
