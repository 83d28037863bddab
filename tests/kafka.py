"""The Kafka broker the tests use: one named by SHADOW_KAFKA_BOOTSTRAP, or scripts/kafka-local.

When no broker can be had, Kafka tests skip with the reason locally; with
SHADOW_REQUIRE_KAFKA=1 (as CI sets it) they fail instead, so a green CI always
means they ran against a real broker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka-local"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("SHADOW_REQUIRE_KAFKA") == "1":
        pytest.fail(f"a Kafka broker is required (SHADOW_REQUIRE_KAFKA=1), but {reason}")
    pytest.skip(f"no Kafka broker: {reason}")


def free_port_pair() -> int:
    """A port that is free on 127.0.0.1 together with the next one (the controller's)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two free ports in a row on 127.0.0.1")


def broker_env(run: Path) -> dict[str, str]:
    """The environment of a broker of its own: free ports, its storage under ``run``,
    so that parallel runs never share one (nor stop each other's)."""
    return {**os.environ, "SHADOW_KAFKA_PORT": str(free_port_pair()),
            "SHADOW_KAFKA_RUN": str(run)}


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of a running broker, for the whole test session."""
    existing = os.environ.get("SHADOW_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    home = tmp_path_factory.mktemp("kafka")
    env = broker_env(home / "run")
    try:
        started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                                 timeout=600, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"{SCRIPT.name} start failed: {exc}")
    if started.returncode != 0:
        unavailable(f"{SCRIPT.name} start failed: {started.stderr.strip()[-500:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        # The broker's storage goes with it; its log stays beside it, with the session's
        # other temporary files, for a failure to be read afterwards.
        with contextlib.suppress(OSError):
            shutil.copyfile(home / "run" / "broker.log", home / "broker.log")
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120, check=False,
                       env=env)
