"""The rollout's state across a broker outage, in a process of its own.

    python -m tests.rollout.state_outage BOOTSTRAP TOPIC STORE

A controller over ``STORE`` publishes its state to ``TOPIC``; a follower follows it.
Once the follower has heard the promotion, the broker is stopped
(``scripts/kafka-local`` with the environment this process was given); when the
follower holds live decisions, the rollout is rolled back; then the broker is
started again, and the follower waited for until it has the rollback and allows
live decisions again. It prints one JSON line of what it saw. kafka-python leaves
the sockets of refused connection attempts to the garbage collector; here they go
with the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rollout import audit
from rollout.controller import Controller
from rollout.state import Action
from rollout.state_topic import StateFollower, StatePublisher
from shadow.config.rollout import RolloutSpec
from shadow.store.database import Store
from tests.kafka import SCRIPT

ROLLOUT = "triage"
MAX_AGE_S = 2.0


def broker(action: str, *options: str) -> None:
    subprocess.run([str(SCRIPT), action, *options], check=True, capture_output=True,
                   timeout=300)


def waited(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``condition`` held, or ``None`` when it did not within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def main(bootstrap: str, topic: str, db: str) -> None:
    plan = RolloutSpec.model_validate({
        "name": ROLLOUT, "steps": [{"percent": 0}, {"percent": 50}],
        "sink": {"kind": "file", "path": "unused.jsonl"}})
    said: dict[str, object] = {}

    def revision(follower: StateFollower) -> int | None:
        current = follower.current(ROLLOUT)
        return current.revision if current is not None else None

    with Store(Path(db)) as store, \
            StatePublisher(bootstrap=bootstrap, topic=topic, heartbeat_s=0.5,
                           timeout_s=2.0) as publisher, \
            StateFollower(bootstrap=bootstrap, topic=topic, max_age_s=MAX_AGE_S,
                          retry_s=0.2) as follower:
        controller = Controller(store, plan, rollout=ROLLOUT, candidate="triage", version="1",
                                comparator="exact", state_topic=publisher)
        controller.sync()
        controller.command(Action.PROMOTE, actor="dana", reason="test", force=True)
        said["promotion_heard_s"] = waited(
            lambda: revision(follower) == 2 and follower.live_allowed(ROLLOUT), 20)

        stopping = time.monotonic()
        broker("stop", "--keep-data")
        said["stop_took_s"] = time.monotonic() - stopping
        said["held_after_s"] = waited(lambda: not follower.live_allowed(ROLLOUT), 20)
        said["age_when_held_s"] = follower.age(ROLLOUT)
        started = time.monotonic()
        controller.command(Action.ROLLBACK, actor="dana", reason="test")
        said["rollback_command_s"] = time.monotonic() - started
        said["revision_while_away"] = revision(follower)
        said["allowed_while_away"] = waited(lambda: follower.live_allowed(ROLLOUT), 1.0)

        broker("start")
        said["rollback_heard_after_restart_s"] = waited(lambda: revision(follower) == 3, 60)
        said["allowed_again_s"] = waited(lambda: follower.live_allowed(ROLLOUT), 10)
        current = follower.current(ROLLOUT)
        stored = audit.load(store, ROLLOUT)
        said["follower_has_the_stored_state"] = current == stored
        said["status"] = current.status.value if current is not None else None
    print(json.dumps(said), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
