"""A Kafka broker of a benchmark's own, with ``scripts/kafka-local``: free ports and a fresh
run directory, so that nothing else running on the machine shares it or stops it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port_pair() -> int:
    """A port that is free on 127.0.0.1 with the next one (the broker's controller)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise SystemExit("no two free ports in a row on 127.0.0.1")


def start_broker(name: str) -> tuple[str, dict[str, str]]:
    """Start a broker; returns its bootstrap address and the environment that stops it."""
    run = tempfile.mkdtemp(prefix=f"shadow-kafka-{name}-")
    env = dict(os.environ, SHADOW_KAFKA_PORT=str(free_port_pair()), SHADOW_KAFKA_RUN=run)
    out = subprocess.run([str(ROOT / "scripts" / "kafka-local"), "start"], env=env,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1], env


def stop_broker(env: dict[str, str]) -> None:
    subprocess.run([str(ROOT / "scripts" / "kafka-local"), "stop"], env=env, check=False,
                   capture_output=True)
    shutil.rmtree(env["SHADOW_KAFKA_RUN"], ignore_errors=True)


@contextmanager
def broker(bootstrap: str | None, name: str) -> Iterator[str]:
    """``bootstrap`` when given; else a broker of the benchmark's own for the block,
    stopped after it."""
    if bootstrap is not None:
        yield bootstrap
        return
    address, env = start_broker(name)
    print(f"started a broker at {address}", flush=True)
    try:
        yield address
    finally:
        stop_broker(env)
