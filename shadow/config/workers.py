"""Candidate workers in a Kafka consumer group, and the one recorder, under ``workers``::

    workers:
      bootstrap: "localhost:9092"
      topic: shadow-predictions     # what workers publish, keyed by event id
      partitions: 12                # when the topic is created: no more recorders' reads
                                    # in parallel than this, so it is a ceiling only later
      group: shadow-recorder        # the recorder's consumer group on that topic

``shadow worker`` consumes the event sources (Kafka topics, in the group each source
names), calls the candidates and publishes every prediction with its event to
``topic``; ``shadow run --role recorder`` consumes ``topic`` and the outcome and verdict
sources into the store. Workers route by the rollout's state on
``rollout.state_topic``, which a rollout with workers must therefore name.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from pydantic import Field

from shadow.core.spec import Spec


class DaemonRole(enum.StrEnum):
    """What ``shadow run`` does: everything in one process, or only the recording."""

    ALL = "all"
    """Read the sources, call the candidates, store, compare, route and publish."""
    RECORDER = "recorder"
    """Store what candidate workers hand over, with the outcome and verdict sources; compare,
    evaluate the rollout and publish its state; serve the control API. Calls no candidate."""


RECORDER_FETCHES: dict[str, int] = {
    "fetch_max_bytes": 32 * 2**20,
    "max_partition_fetch_bytes": 4 * 2**20,
    "receive_buffer_bytes": 4 * 2**20,
}
"""The recorder's consumer settings on ``topic`` where ``options`` sets none: a worker's
message holds up to half a megabyte, and with kafka-python's defaults (1 MiB a partition,
the system's socket buffer) the recorder waited on the broker every two messages a
partition. Reads stay a batch's worth of events (``store.batch_size``) at a time."""


class WorkersSpec(Spec):
    """The topic between candidate workers and the recorder."""

    bootstrap: Annotated[str, Field(min_length=1)]
    topic: Annotated[str, Field(min_length=1)] = "shadow-predictions"
    partitions: int = Field(12, ge=1, le=10_000)
    """The partitions of ``topic`` when it is created (an existing topic keeps its own)."""
    group: Annotated[str, Field(min_length=1)] = "shadow-recorder"
    """The recorder's consumer group on ``topic``."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed to kafka-python's producer and consumer of ``topic`` (e.g. security settings)."""
