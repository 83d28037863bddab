"""The daemon as a subprocess: start it on a configuration, find its API, stop it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shadow.service.control import DaemonFile

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


def start_daemon(config: Path, log_name: str, *, token: str | None = TOKEN
                 ) -> subprocess.Popen[str]:
    """``shadow run`` on ``config`` in its directory, logging to ``log_name`` there."""
    directory = config.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    if token is not None:
        env["SHADOW_API_TOKEN"] = token
    # Logs go to a file: a pipe nobody reads while the daemon runs would fill and block it.
    log = open(directory / log_name, "w", encoding="utf-8")  # noqa: SIM115
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "shadow", "run", "--config", str(config)],
            cwd=directory, env=env, stdout=log, stderr=log, text=True)
    finally:
        log.close()
    process.log = directory / log_name  # type: ignore[attr-defined]
    return process


def ready_api(db: Path, timeout_s: float = 60) -> str:
    """The API address of the daemon running for ``db``, once it answers ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = DaemonFile.read(db)
        if found is not None and get(found.api + "/ready")[0] == 200:
            return found.api
        time.sleep(0.2)
    raise AssertionError("the daemon did not become ready")


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
