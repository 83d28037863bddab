"""The state topic under ``rollout.state_topic``: what loads, its defaults, and one error per
validation, each naming the key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shadow.config.file import parse_config
from shadow.config.state_topic import StateTopicSpec
from shadow.core.errors import ConfigError

CANDIDATE = {"callable": "tests.config.test_state_topic:answer", "name": "triage"}
TOPIC = {"bootstrap": "localhost:9092", "topic": "shadow-rollout-state"}


def answer(event: Any) -> str:
    return "billing"


def config(state_topic: Any) -> dict[str, Any]:
    return {"candidate": CANDIDATE,
            "rollout": {"steps": [{"percent": 0}], "state_topic": state_topic}}


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    return str(caught.value)


def test_a_state_topic_loads_with_its_defaults() -> None:
    rollout = parse_config(config(TOPIC)).rollout
    assert rollout is not None
    assert rollout.state_topic == StateTopicSpec(
        bootstrap="localhost:9092", topic="shadow-rollout-state",
        heartbeat=timedelta(seconds=1), max_age=timedelta(seconds=2))


def test_durations_are_written_as_elsewhere() -> None:
    rollout = parse_config(config({**TOPIC, "heartbeat": "250ms", "max_age": 1})).rollout
    assert rollout is not None and rollout.state_topic is not None
    assert (rollout.state_topic.heartbeat, rollout.state_topic.max_age) == (
        timedelta(milliseconds=250), timedelta(seconds=1))


def test_without_it_nothing_is_published() -> None:
    rollout = parse_config({"candidate": CANDIDATE, "rollout": {"steps": [{"percent": 0}]}}).rollout
    assert rollout is not None and rollout.state_topic is None


@pytest.mark.parametrize(("written", "expected"), [
    ({"topic": "t"}, "rollout.state_topic.bootstrap: required setting is missing"),
    ({"bootstrap": "b"}, "rollout.state_topic.topic: required setting is missing"),
    ({**TOPIC, "heartbeat": "0s"}, "rollout.state_topic.heartbeat: must be a positive duration"),
    ({**TOPIC, "max_age": "-1s"},
     "rollout.state_topic.max_age: expected a duration such as 90s"),
    ({**TOPIC, "heartbeat": "soon"},
     "rollout.state_topic.heartbeat: expected a duration such as 90s"),
    ({**TOPIC, "heartbeat": "2s", "max_age": "2s"},
     "rollout.state_topic: max_age (2s) must be longer than heartbeat (2s)"),
    ({**TOPIC, "partitions": 3}, "rollout.state_topic.partitions: unknown setting"),
    ("localhost:9092", "rollout.state_topic: expected a mapping of settings"),
])
def test_each_mistake_is_named_by_its_key(written: Any, expected: str) -> None:
    assert expected in error_of(config(written))
