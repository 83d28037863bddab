"""A source's offsets across a broker outage, in a process of its own.

    python -m tests.kafka_outage BOOTSTRAP TOPIC N

Reads the topic's first ``N`` records, stops the broker (``scripts/kafka-local``
with the environment this process was given), commits, waits until the source
says the broker is away, starts the broker again, then polls until the source
is well again. It prints one JSON line: how long the commit took, what the
source said before and after. kafka-python leaves the sockets of refused
connection attempts to the garbage collector; here they go with the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from connectors.base import RawRecord
from connectors.kafka import KafkaSource, Start
from tests.kafka import SCRIPT


def broker(action: str, *options: str) -> None:
    subprocess.run([str(SCRIPT), action, *options], check=True, capture_output=True,
                   timeout=300)


def main(bootstrap: str, topic: str, n: str) -> None:
    wanted = int(n)
    source = KafkaSource(bootstrap=bootstrap, topics=[topic], group_id=f"g-{topic}",
                         start=Start.EARLIEST, poll_timeout_s=0.2, commit_timeout_s=1.0)
    said: dict[str, object] = {}
    with source:
        taken: list[RawRecord] = []
        while len(taken) < wanted:
            taken += source.poll(wanted - len(taken))
        broker("stop", "--keep-data")
        try:
            started = time.monotonic()
            source.commit(taken[-1].position)
            said["commit_s"] = time.monotonic() - started
            said["after_commit"] = source.away()
            deadline = time.monotonic() + 20
            while "no broker reachable" not in (source.away() or ""):
                if time.monotonic() > deadline:
                    break
                said["records_while_away"] = len(source.poll(10))
            said["while_away"] = source.away()
        finally:
            broker("start")
        deadline = time.monotonic() + 90
        again: list[str] = []
        while source.away() is not None and time.monotonic() < deadline:
            again += [record.position for record in source.poll(10)]
        said["after"] = source.away()
        said["read_again"] = again  # records handed out again once the broker was back
    print(json.dumps(said), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
