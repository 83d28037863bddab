"""Where the rollout's state is published for other processes, under ``rollout.state_topic``::

    rollout:
      state_topic:
        bootstrap: "localhost:9092"
        topic: shadow-rollout-state   # created compacted when missing
        heartbeat: 1s                 # the current state is published again this often
        max_age: 2s                   # a follower not hearing it for longer holds live decisions

Every change of the rollout's state, and a heartbeat of the current state, goes to a
compacted topic keyed by the rollout's name (:mod:`rollout.state_topic`). ``max_age``
must be longer than ``heartbeat``, or followers would hold between two heartbeats.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from shadow.core.spec import Duration, Spec


class StateTopicSpec(Spec):
    """The compacted topic the rollout's state is published on."""

    bootstrap: Annotated[str, Field(min_length=1)]
    topic: Annotated[str, Field(min_length=1)]
    heartbeat: Duration = timedelta(seconds=1)
    """How often the current state is published again while nothing changes."""
    max_age: Duration = timedelta(seconds=2)
    """How long a follower may go without hearing the current state before it stops
    publishing live decisions (shadow only) until it hears it again."""

    @field_validator("heartbeat", "max_age")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"must be a positive duration, got {value.total_seconds():g}s")
        return value

    @model_validator(mode="after")
    def _max_age_outlasts_heartbeat(self) -> StateTopicSpec:
        if self.max_age <= self.heartbeat:
            raise ValueError(
                f"max_age ({self.max_age.total_seconds():g}s) must be longer than heartbeat "
                f"({self.heartbeat.total_seconds():g}s): followers would stop acting between "
                f"two heartbeats")
        return self
