"""Consume a topic into a store, as a separate process (tests kill it midway).

    python -m tests.kafka_consumer BOOTSTRAP TOPIC GROUP DB [IDLE_S [EXPECT]]

It prints ``handed out N`` after every batch, so a test can act in the middle
of the stream. With ``EXPECT``, idleness ends the run only once the store holds
that many events (or after two minutes): a broker that is slow to come back on
a loaded machine must not end the run early.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.kafka import KafkaSource, Start
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.core.models import Event
from shadow.pipeline.runner import Pipeline
from shadow.store.database import Store

PATIENCE_S = 120.0


def slow_label(event: Event) -> str:
    time.sleep(0.002)  # slow enough for a kill to land in the middle of the stream
    return "billing"


class UntilStored(KafkaSource):
    """Exhausted when idle and ``stored()`` reached ``expect``, or when patience ran out."""

    def __init__(self, stored: Callable[[], int], expect: int, **options: Any) -> None:
        super().__init__(**options)
        self._stored, self._expect = stored, expect
        self._give_up_at = time.monotonic() + PATIENCE_S

    @property
    def exhausted(self) -> bool:
        if not super().exhausted:
            return False
        return self._stored() >= self._expect or time.monotonic() > self._give_up_at


def print_progress(source: str, handed_out: int, fraction: float | None) -> None:
    print(f"handed out {handed_out}", flush=True)


def main(bootstrap: str, topic: str, group: str, db: str, idle_s: str = "4",
         expect: str = "0") -> None:
    options: dict[str, Any] = dict(
        bootstrap=bootstrap, topics=[topic], group_id=group, start=Start.COMMITTED,
        poll_timeout_s=0.5, idle_s=float(idle_s),
        # a killed member's partitions are handed on after this long
        options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                 "reconnect_backoff_max_ms": 1000})
    candidate = CallableCandidate(slow_label, name="labeller")
    with Store(Path(db)) as store:
        source = (UntilStored(lambda: store.count("events"), int(expect), **options)
                  if int(expect) else KafkaSource(**options))
        Pipeline(store, candidate, build_comparator(ExactSpec()), batch_size=200,
               progress=print_progress).run([source])


if __name__ == "__main__":
    main(*sys.argv[1:])
