"""The Kafka broker the tests use: one named by SHADOW_KAFKA_BOOTSTRAP, or scripts/kafka-local.

When no broker can be had, Kafka tests skip with the reason locally; with
SHADOW_REQUIRE_KAFKA=1 (as CI sets it) they fail instead, so a green CI always
means they ran against a real broker.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a running broker, for the whole test session."""
    existing = os.environ.get("SHADOW_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    try:
        started = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                                 timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"{SCRIPT.name} start failed: {exc}")
    if started.returncode != 0:
        unavailable(f"{SCRIPT.name} start failed: {started.stderr.strip()[-500:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, timeout=120, check=False)
