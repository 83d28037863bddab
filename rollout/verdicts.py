"""Approved and edited proposals reach the action sink, exactly once for consumers.

A verdict is stored first (:mod:`shadow.store.verdicts`); every approved or edited
live proposal whose verdict the action sink does not have yet is then published and
marked (``review_verdicts.published_at``): the outbox of live decisions
(:mod:`rollout.runtime`), so a crash between storing a verdict and publishing it
publishes it after the restart, and a crash between publishing and marking publishes
it again under the same ``idempotency_key`` (``act_`` and the digest of the
``review_id``), by which consumers drop the repeat. A rejected proposal is never
published. The message is the decision's (:meth:`connectors.sinks.Decision.body`)
with the output the reviewer let through, and the verdict beside it::

    {"event_id": "e1", "key": "T-1", "candidate": "desk", "version": "3",
     "output": {…}, "rollout": "desk", "step": 1, "percent": 5.0, "review": true,
     "predicted_at": "…+00:00", "actions": [{"tool": "send_reply", "arguments": {…}}],
     "idempotency_key": "act_…", "review_id": "rev_…", "verdict": "edit",
     "reviewer": "dana", "decided_at": "…+00:00"}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from connectors.sinks import Decision, Sink, SinkError
from shadow.store import verdicts
from shadow.store.database import Store
from shadow.store.verdicts import Approved

log = structlog.get_logger(__name__)


def idempotency_key(review_id: str) -> str:
    """The action's key: ``act_`` and the digest of the review id (``rev_…``)."""
    return "act_" + review_id.removeprefix("rev_")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewedAction(Decision):
    """A proposal a person approved or edited, on its way to the action sink."""

    review_id: str
    verdict: str
    reviewer: str | None
    decided_at: datetime

    @classmethod
    def approved(cls, approved: Approved) -> ReviewedAction:
        """The action request of a stored approved or edited proposal."""
        p = approved.proposal
        return cls(event_id=p["event_id"], key=p["key"], candidate=p["candidate"],
                   version=p["version"], output=approved.output, rollout=p["rollout"],
                   step=p["step"], percent=p["percent"], review=True,
                   predicted_at=datetime.fromisoformat(p["predicted_at"]),
                   review_id=approved.review_id, verdict=approved.verdict,
                   reviewer=approved.reviewer, decided_at=approved.decided_at)

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.review_id)

    def body(self) -> bytes:
        message: dict[str, Any] = orjson.loads(Decision.body(self))
        message["idempotency_key"] = self.idempotency_key
        message.update(review_id=self.review_id, verdict=self.verdict, reviewer=self.reviewer,
                       decided_at=self.decided_at.astimezone(UTC).isoformat())
        return orjson.dumps(message)

    def headers(self) -> list[tuple[str, bytes]]:
        headers = [h for h in Decision.headers(self) if h[0] != "idempotency_key"]
        return [*headers, ("idempotency_key", self.idempotency_key.encode()),
                ("review_id", self.review_id.encode()), ("verdict", self.verdict.encode())]

    @property
    def message_id(self) -> str:
        return "msg_" + self.idempotency_key


def publish_approved(store: Store, sink: Sink, *, rollout: str, now: Callable[[], datetime],
                     batch: int = 1000) -> int:
    """Publish the rollout's approved and edited live proposals the sink does not have
    yet, and mark them; returns how many went out. A sink that refuses leaves them for
    the next call."""
    sent = 0
    while True:
        waiting = verdicts.unpublished(store, rollout, batch)
        if not waiting:
            return sent
        actions = [ReviewedAction.approved(a) for a in waiting]
        try:
            sink.publish(actions)
        except SinkError as exc:
            log.warning("reviewed actions not published; retrying later",
                        pending=len(actions), error=str(exc))
            return sent
        verdicts.mark_published(store, [a.review_id for a in actions], now())
        sent += len(actions)
