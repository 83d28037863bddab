"""Consume a topic into a store, as a separate process (tests kill it midway).

    python -m tests.kafka_consumer BOOTSTRAP TOPIC GROUP DB [IDLE_S]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from connectors.kafka import KafkaSource, Start
from shadow.candidates import CallableCandidate
from shadow.comparator_specs import ExactSpec
from shadow.comparators import build_comparator
from shadow.models import Event
from shadow.runner import Replay
from shadow.store import Store


def slow_label(event: Event) -> str:
    time.sleep(0.002)  # slow enough for a kill to land in the middle of the stream
    return "billing"


def main(bootstrap: str, topic: str, group: str, db: str, idle_s: str = "4") -> None:
    source = KafkaSource(bootstrap=bootstrap, topics=[topic], group_id=group,
                         start=Start.COMMITTED, poll_timeout_s=0.5, idle_s=float(idle_s),
                         # a killed member's partitions are handed on after this long
                         options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
                                  "reconnect_backoff_max_ms": 1000})
    candidate = CallableCandidate(slow_label, name="labeller")
    with Store(Path(db)) as store:
        Replay(store, candidate, build_comparator(ExactSpec()), batch_size=200).run([source])


if __name__ == "__main__":
    main(*sys.argv[1:])
