"""The rollout's state on a compacted topic, against a real broker: published by the
controller, followed from the beginning, never going back, and held when not heard."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from rollout import audit
from rollout.controller import Controller
from rollout.runtime import open_rollout
from rollout.state import Action, RolloutState, Status
from rollout.state_topic import Kind, PublishedState, StateFollower, StatePublisher
from shadow.candidates import CallableCandidate
from shadow.compare.comparators import build_comparator
from shadow.config.comparators import ExactSpec
from shadow.config.rollout import RolloutSpec
from shadow.store.database import Store
from tests.kafka import SCRIPT, broker_env
from tests.waiting import wait_until

ROLLOUT = "triage"
AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def topic_name() -> str:
    return f"rollout-state-{uuid.uuid4().hex[:10]}"


def state(revision: int, *, rollout: str = ROLLOUT, percent: float = 5.0) -> RolloutState:
    return RolloutState(rollout=rollout, candidate="triage", version="1", step=1,
                        percent=percent, status=Status.PROGRESSING, step_started_at=AT,
                        updated_at=AT, revision=revision)


def plan(**extra: object) -> RolloutSpec:
    """Shadow, then 50 %; the sink is never opened unless a test gives one of its own."""
    return RolloutSpec.model_validate({
        "name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 50}],
        "sink": {"kind": "file", "path": "unused.jsonl"}, **extra})


def controller(store: Store, publisher: StatePublisher | None) -> Controller:
    return Controller(store, plan(), rollout=ROLLOUT, candidate="triage", version="1",
                      comparator="exact", state_topic=publisher)


def write_raw(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    """A record written past the publisher: a redelivery, a stale publisher, anything."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=key.encode(), value=value).get(timeout=30)
    finally:
        producer.close()


def messages(bootstrap: str, topic: str) -> list[PublishedState]:
    """Every message on the topic, read by a plain consumer of its own."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return [PublishedState.from_json(m.value) for m in consumer]
    finally:
        consumer.close()


def follow(bootstrap: str, topic: str, *, max_age_s: float = 2.0,
           on_state: Callable[[PublishedState], None] | None = None) -> StateFollower:
    """A follower, started by entering it."""
    return StateFollower(bootstrap=bootstrap, topic=topic, max_age_s=max_age_s, retry_s=0.2,
                         on_state=on_state)


def revision(follower: StateFollower) -> int | None:
    current = follower.current(ROLLOUT)
    return current.revision if current is not None else None


# -- publishing ----------------------------------------------------------------------------


def test_the_topic_is_created_compacted_and_holds_every_change_in_order(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_name()
    with Store(tmp_path / "s.duckdb") as store, \
            StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=60) as publisher:
        c = controller(store, publisher)
        c.sync()
        c.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        c.command(Action.ROLLBACK, actor="dana", reason="test")
        assert publisher.flush(30)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    assert described["topic"][topic]["cleanup.policy"]["value"] == "compact"
    found = messages(kafka_bootstrap, topic)
    assert [(m.state.revision, m.state.percent, m.state.status, m.kind) for m in found] == [
        (1, 0.0, Status.PROGRESSING, Kind.CHANGE), (2, 50.0, Status.PROMOTED, Kind.CHANGE),
        (3, 0.0, Status.ROLLED_BACK, Kind.CHANGE)]
    assert all(m.published_at >= m.state.updated_at for m in found)


def test_a_follower_started_after_several_transitions_sees_the_latest(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_name()
    with Store(tmp_path / "s.duckdb") as store, \
            StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=0.2) as publisher:
        c = controller(store, publisher)
        c.sync()
        for action in (Action.PROMOTE, Action.ROLLBACK, Action.RESTART, Action.PROMOTE,
                       Action.PAUSE):
            c.command(action, actor="dana", reason="test", force=action is Action.PROMOTE)
        stored = audit.load(store, ROLLOUT)
        assert publisher.flush(30)
        with follow(kafka_bootstrap, topic) as follower:
            assert follower.wait_caught_up(30)
            assert follower.current(ROLLOUT) == stored
            # Read at start, the state is known but not yet heard: the next heartbeat is.
            wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=10,
                       what="a heartbeat of the current state")
    assert stored is not None and (stored.revision, stored.status) == (6, Status.PAUSED)


def test_a_broker_away_stops_neither_the_controller_nor_its_transitions(tmp_path: Path) -> None:
    topic = topic_name()
    nowhere = "127.0.0.1:1"  # nothing listens on port 1
    with Store(tmp_path / "s.duckdb") as store, \
            StatePublisher(bootstrap=nowhere, topic=topic, heartbeat_s=0.1,
                           timeout_s=1.0) as publisher:
        c = controller(store, publisher)
        started = time.monotonic()
        c.sync()
        c.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        took = time.monotonic() - started
        assert not publisher.flush(0.5)
        stored = audit.load(store, ROLLOUT)
    assert stored is not None and stored.revision == 2
    assert took < 1.0
    assert publisher.changes == 0


def test_the_configured_state_topic_is_published_by_the_rollout_of_a_run(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_name()
    spec = plan(state_topic={"bootstrap": kafka_bootstrap, "topic": topic, "heartbeat": "100ms",
                             "max_age": "1s"},
                sink={"kind": "file", "path": str(tmp_path / "decisions.jsonl")})
    with Store(tmp_path / "s.duckdb") as store, ExitStack() as opened, \
            CallableCandidate(lambda event: "billing", name="triage", version="1") as candidate:
        live = open_rollout(spec, store, [candidate], build_comparator(ExactSpec()), opened)
        live.controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        stored = audit.load(store, ROLLOUT)
        with follow(kafka_bootstrap, topic, max_age_s=1.0) as follower:
            wait_until(lambda: follower.current(ROLLOUT), accept=lambda s: s == stored,
                       timeout_s=10, what="the promotion")
            wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=10,
                       what="the run's heartbeat")
    assert stored is not None and (stored.revision, stored.percent) == (2, 50.0)


# -- following -------------------------------------------------------------------------------


def test_an_older_revision_delivered_again_never_takes_a_follower_back(
        kafka_bootstrap: str) -> None:
    topic = topic_name()
    with StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=60) as publisher:
        for revision in (1, 2, 3):
            publisher.publish(state(revision, percent=revision * 10.0))
        assert publisher.flush(30)
        with follow(kafka_bootstrap, topic) as follower:
            assert follower.wait_caught_up(30)
            old = PublishedState(state=state(2, percent=20.0), published_at=datetime.now(UTC))
            write_raw(kafka_bootstrap, topic, ROLLOUT, old.as_json())
            # A later record of another rollout: once it is read, so was the old one.
            publisher.publish(state(1, rollout="marker"))
            wait_until(lambda: follower.current("marker"), timeout_s=10, what="the marker")
            assert follower.current(ROLLOUT) == state(3, percent=30.0)
        # Read from the beginning, the older record is the last of its key: still ignored.
        with follow(kafka_bootstrap, topic) as late:
            assert late.wait_caught_up(30)
            assert late.current(ROLLOUT) == state(3, percent=30.0)


def test_an_older_revision_is_not_a_sign_of_life(kafka_bootstrap: str) -> None:
    topic = topic_name()
    with StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=60) as publisher, \
            follow(kafka_bootstrap, topic, max_age_s=0.5) as follower:
        publisher.publish(state(5))
        wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=10, what="revision 5")
        time.sleep(0.6)
        stale = PublishedState(state=state(4), published_at=datetime.now(UTC))
        write_raw(kafka_bootstrap, topic, ROLLOUT, stale.as_json())
        publisher.publish(state(1, rollout="marker"))
        wait_until(lambda: follower.current("marker"), timeout_s=10, what="the marker")
        assert not follower.live_allowed(ROLLOUT)


def test_a_record_that_is_no_rollout_state_is_skipped(kafka_bootstrap: str) -> None:
    topic = topic_name()
    with StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=60) as publisher:
        publisher.publish(state(1))
        assert publisher.flush(30)
        write_raw(kafka_bootstrap, topic, ROLLOUT, b'{"rollout": "triage"}')
        publisher.publish(state(2))
        assert publisher.flush(30)
        with follow(kafka_bootstrap, topic) as follower:
            assert follower.wait_caught_up(30)
            assert follower.current(ROLLOUT) == state(2)
            assert follower.malformed == 1


def test_heartbeats_keep_live_allowed_through_a_quiet_period(kafka_bootstrap: str) -> None:
    topic = topic_name()
    heartbeat_s, max_age_s = 0.3, 0.8
    with StatePublisher(bootstrap=kafka_bootstrap, topic=topic,
                        heartbeat_s=heartbeat_s) as publisher, \
            follow(kafka_bootstrap, topic, max_age_s=max_age_s) as follower:
        publisher.publish(state(7))
        wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=10, what="revision 7")
        ages, allowed = [], []
        quiet_until = time.monotonic() + 3.0
        while time.monotonic() < quiet_until:
            ages.append(follower.age(ROLLOUT))
            allowed.append(follower.live_allowed(ROLLOUT))
            time.sleep(0.05)
        heartbeats = publisher.heartbeats
    assert all(allowed), ages
    assert max(a for a in ages if a is not None) < max_age_s
    assert heartbeats >= 3.0 / heartbeat_s - 2
    assert follower.current(ROLLOUT) == state(7)


def test_a_follower_that_stops_hearing_holds_until_it_hears_again(kafka_bootstrap: str) -> None:
    topic = topic_name()
    max_age_s = 0.8
    with follow(kafka_bootstrap, topic, max_age_s=max_age_s) as follower:
        with StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=0.2) as first:
            first.publish(state(3))
            wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=10, what="revision 3")
        stopped = time.monotonic()
        wait_until(lambda: not follower.live_allowed(ROLLOUT), timeout_s=10,
                   what="live decisions held")
        held_after = time.monotonic() - stopped
        age = follower.age(ROLLOUT)
        assert age is not None and age > max_age_s
        assert follower.current(ROLLOUT) == state(3)  # the last state known stays
        with StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=0.2) as second:
            second.publish(state(3))
            wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=10,
                       what="live decisions allowed again")
    # The last heartbeat came up to one interval before the publisher stopped.
    assert max_age_s - 0.25 <= held_after <= max_age_s + 1.0


def test_a_follower_whose_topic_does_not_exist_yet_waits_for_it(kafka_bootstrap: str) -> None:
    topic = topic_name()
    with follow(kafka_bootstrap, topic) as follower:
        time.sleep(0.5)
        assert not follower.live_allowed(ROLLOUT) and follower.current(ROLLOUT) is None
        with StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=0.2) as publisher:
            publisher.publish(state(1))
            wait_until(lambda: follower.live_allowed(ROLLOUT), timeout_s=15,
                       what="the topic created and read")


# -- a broker of its own, stopped and started again -----------------------------------------


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A broker of this test's own, so stopping it disturbs no other test."""
    env = broker_env(tmp_path / "kafka")
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True,
                             check=True, timeout=600)
    try:
        yield started.stdout.strip().splitlines()[-1], env
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120,
                       check=False)


def test_a_broker_going_away_holds_followers_and_the_controller_carries_on(
        own_broker: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    bootstrap, env = own_broker
    run = subprocess.run(
        [sys.executable, "-m", "tests.rollout.state_outage", bootstrap, topic_name(),
         str(tmp_path / "s.duckdb")],
        env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
        timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    said = json.loads(run.stdout.strip().splitlines()[-1])
    assert said["promotion_heard_s"] is not None, said
    # Held (within 20 s of the broker stopping), for not hearing it for max_age (2 s).
    assert said["held_after_s"] is not None and said["age_when_held_s"] > 2.0, said
    assert said["rollback_command_s"] < 1.0, said  # the controller does not wait for it
    assert said["revision_while_away"] == 2 and said["allowed_while_away"] is None, said
    assert said["rollback_heard_after_restart_s"] is not None, said
    assert said["allowed_again_s"] is not None, said
    assert said["follower_has_the_stored_state"] and said["status"] == "rolled_back", said


# -- how fast a change reaches a follower -----------------------------------------------------


def test_a_rollback_reaches_a_follower_within_two_seconds_p99_over_20(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = topic_name()
    received: dict[int, float] = {}

    def heard(message: PublishedState) -> None:
        received[message.state.revision] = time.monotonic()

    delays = []
    with Store(tmp_path / "s.duckdb") as store, \
            StatePublisher(bootstrap=kafka_bootstrap, topic=topic, heartbeat_s=1.0) as publisher, \
            follow(kafka_bootstrap, topic, on_state=heard) as follower:
        c = controller(store, publisher)
        c.sync()
        assert follower.wait_caught_up(30)
        for _ in range(20):
            c.command(Action.PROMOTE, actor="dana", reason="test", force=True)
            started = time.monotonic()
            rollback = c.command(Action.ROLLBACK, actor="dana", reason="measured")
            revision = rollback.after.revision
            wait_until(lambda: received.get(revision), timeout_s=10,  # noqa: B023
                       what=f"rollback at revision {revision}")
            delays.append(received[revision] - started)
            c.command(Action.RESTART, actor="dana", reason="test")
        stored = audit.load(store, ROLLOUT)
        wait_until(lambda: follower.current(ROLLOUT), accept=lambda s: s == stored,
                   timeout_s=10, what="the last restart")
    ordered = sorted(delays)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(f"\nrollback to follower over {len(delays)} rollbacks: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms")
    assert p99 < 2.0, ordered
