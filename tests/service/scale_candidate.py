"""The candidate of the worker tests, loaded by ``shadow worker`` as a callable: it files a
ticket under the category its payload asks for, after ``SCALE_SLEEP_MS`` milliseconds (a
model's latency, 0 unless the environment sets it)."""

from __future__ import annotations

import os
import time
from typing import Any

from shadow.core.models import Event

SLEEP_MS = "SCALE_SLEEP_MS"


def triage(event: Event) -> dict[str, Any]:
    delay = float(os.environ.get(SLEEP_MS, "0")) / 1000
    if delay:
        time.sleep(delay)
    return {"category": event.payload["category"]}
