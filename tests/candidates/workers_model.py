"""Candidates for the worker-process tests (``tests/candidates/test_workers.py``).

They live in a module of their own because a worker process imports its candidate by
module and name. Payload fields steer them: ``boom`` raises, ``die_once`` (a file path)
kills the worker with SIGKILL the first time, ``die_always`` every time, and
``wait_for_kill`` (a file path) writes the worker's pid there and waits to be killed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from shadow import batch
from shadow.core.models import Event


def digest(text: str) -> int:
    """A little CPU work with a result the test computes again on its own."""
    value = 0
    for char in text * 8:
        value = (value * 31 + ord(char)) & 0xFFFFFFFF
    return value


def label(event: Event) -> dict[str, Any]:
    payload = event.payload
    if payload.get("boom"):
        raise ValueError(f"no label for {event.event_id}")
    if payload.get("die_always"):
        os.kill(os.getpid(), signal.SIGKILL)
    marker = payload.get("die_once")
    if marker and not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    waiting = payload.get("wait_for_kill")
    if waiting and not Path(waiting).exists():
        Path(waiting).write_text(str(os.getpid()))
        time.sleep(60)  # killed by the test long before
    return {"label": "long" if len(payload.get("text", "")) > 8 else "short",
            "digest": digest(payload.get("text", "")), "confidence": 0.75}


def pid(event: Event) -> int:
    return os.getpid()


@batch(size=4)
def labels(events: list[Event]) -> list[dict[str, Any]]:
    """Each output says which events shared its call, so the test sees the lists."""
    together = [e.event_id for e in events]
    return [{"digest": digest(e.payload.get("text", "")), "with": together} for e in events]
