"""The tiers of predictions and the proposals of tier ``review`` (migration 14).

The rollout assesses each stored prediction of its candidate once (``tier`` and
``tier_rule`` of ``predictions``, NULL until then) and, in the same transaction,
stores the proposal of every prediction of tier ``review`` in ``reviews``, one row
per ``review_id``. A live proposal waits there until the review sink has it
(``published_at``): the same outbox as the action sink's, so a crash between
publishing and marking publishes the same proposal again, never loses one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shadow.store.database import Store

_UNASSESSED = """
SELECT p.event_id, e.key, e.payload, p.mode, p.output, p.confidence,
       p.error_type IS NOT NULL, p.abstained, coalesce(len(p.violations), 0) > 0,
       p.rollout_step, p.predicted_at, p.withdrawn_at IS NOT NULL
FROM predictions p JOIN events e USING (event_id)
WHERE p.candidate = $candidate AND p.version IS NOT DISTINCT FROM $version AND p.tier IS NULL
ORDER BY p.predicted_at, p.event_id
LIMIT $limit
"""

_SET_TIERS = """
UPDATE predictions SET tier = t.tier, tier_rule = t.rule
FROM (SELECT unnest($ids) AS event_id, unnest($tiers) AS tier, unnest($rules) AS rule) t
WHERE predictions.event_id = t.event_id AND predictions.candidate = $candidate
  AND predictions.version IS NOT DISTINCT FROM $version
"""

_PROPOSE = """
INSERT INTO reviews (review_id, event_id, key, candidate, version, rollout, mode,
                     rollout_step, proposed_at, status, proposal)
VALUES ($review_id, $event_id, $key, $candidate, $version, $rollout, $mode, $step,
        $proposed_at, $status, $proposal)
ON CONFLICT DO NOTHING
"""

_UNPUBLISHED = """
SELECT review_id, proposal FROM reviews
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version AND rollout = $rollout
  AND mode = 'live' AND status = 'open' AND published_at IS NULL
ORDER BY proposed_at, event_id
LIMIT $limit
"""

_WITHDRAW = """
UPDATE reviews SET status = 'withdrawn'
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version AND mode = 'live'
  AND status = 'open' AND published_at IS NULL AND proposed_at < $before
RETURNING review_id
"""


@dataclass(frozen=True, slots=True)
class Unassessed:
    """A stored prediction without a tier yet, with what its assessment needs."""

    event_id: str
    key: str
    payload: Any
    live: bool
    output: Any
    confidence: float | None
    error: bool
    abstained: bool
    violations: bool
    step: int | None
    predicted_at: datetime
    withdrawn: bool
    """A live decision withdrawn before it was assessed (a rollback): its proposal, if
    any, is stored withdrawn and never published."""


@dataclass(frozen=True, slots=True)
class Assessed:
    """A prediction's tier, what chose it, and its proposal when the tier is ``review``."""

    event_id: str
    tier: str
    rule: str
    proposal: Proposed | None = None


@dataclass(frozen=True, slots=True)
class Proposed:
    """A row of ``reviews``: ``proposal`` is the message a review sink receives."""

    review_id: str
    key: str
    rollout: str
    live: bool
    step: int | None
    proposed_at: datetime
    proposal: dict[str, Any]
    withdrawn: bool = False


def unassessed(store: Store, candidate: str, version: str | None,
               limit: int) -> list[Unassessed]:
    """The oldest ``limit`` predictions of the candidate without a tier."""
    rows = store.db.execute(_UNASSESSED, {"candidate": candidate, "version": version,
                                          "limit": limit}).fetchall()
    return [Unassessed(event_id=r[0], key=r[1], payload=_json(r[2]), live=r[3] == "live",
                       output=_json(r[4]), confidence=r[5], error=bool(r[6]),
                       abstained=bool(r[7]), violations=bool(r[8]), step=r[9],
                       predicted_at=r[10], withdrawn=bool(r[11]))
            for r in rows]


_ALL_AUTO = """
UPDATE predictions
SET tier = CASE WHEN error_type IS NOT NULL OR abstained OR coalesce(len(violations), 0) > 0
                THEN 'human' ELSE 'auto' END,
    tier_rule = CASE WHEN error_type IS NOT NULL THEN 'error' WHEN abstained THEN 'abstained'
                     WHEN coalesce(len(violations), 0) > 0 THEN 'violation'
                     ELSE 'default' END
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version AND tier IS NULL
"""


def assess_all_auto(store: Store, candidate: str, version: str | None) -> int:
    """Give every prediction of the candidate without a tier the tier a policy without
    rules whose default is ``auto`` gives (``human`` for errors, abstentions and
    violations, with those rules' names), in one statement; returns how many."""
    with store.transaction() as tx:
        ((count,),) = tx.execute(_ALL_AUTO, {"candidate": candidate,
                                             "version": version}).fetchall()
    return int(count)


def record_assessed(store: Store, candidate: str, version: str | None,
                    assessed: Sequence[Assessed]) -> None:
    """Store the tiers and the proposals in one transaction; a proposal stored before
    (same ``review_id``) is kept as it was."""
    if not assessed:
        return
    with store.transaction() as tx:
        tx.execute(_SET_TIERS, {"ids": [a.event_id for a in assessed],
                                "tiers": [a.tier for a in assessed],
                                "rules": [a.rule for a in assessed],
                                "candidate": candidate, "version": version})
        for a in assessed:
            p = a.proposal
            if p is None:
                continue
            tx.execute(_PROPOSE, {
                "review_id": p.review_id, "event_id": a.event_id, "key": p.key,
                "candidate": candidate, "version": version, "rollout": p.rollout,
                "mode": "live" if p.live else "shadow", "step": p.step,
                "proposed_at": p.proposed_at, "proposal": orjson.dumps(p.proposal).decode(),
                "status": "withdrawn" if p.withdrawn else "open"})


def unpublished(store: Store, candidate: str, version: str | None, rollout: str,
                limit: int) -> list[tuple[str, dict[str, Any]]]:
    """The oldest ``limit`` open live proposals not yet on the review sink:
    ``(review_id, proposal)`` each."""
    rows = store.db.execute(_UNPUBLISHED, {"candidate": candidate, "version": version,
                                           "rollout": rollout, "limit": limit}).fetchall()
    return [(r[0], orjson.loads(r[1])) for r in rows]


def mark_published(store: Store, review_ids: Sequence[str], at: datetime) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE reviews SET published_at = ? WHERE review_id IN (SELECT unnest(?))",
                   [at, list(review_ids)])


def withdraw(store: Store, candidate: str, version: str | None, *, before: datetime) -> int:
    """Withdraw the live proposals that never reached the review sink, made before
    ``before``; returns how many."""
    with store.transaction() as tx:
        rows = tx.execute(_WITHDRAW, {"candidate": candidate, "version": version,
                                      "before": before}).fetchall()
    return len(rows)


def tier_counts(store: Store, candidate: str, version: str | None, *,
                since: datetime | None = None, latest: int | None = None) -> dict[str, int]:
    """How many of the candidate's assessed predictions fell in each tier: those made at
    or after ``since``, of the ``latest`` most recent, when given."""
    rows = store.db.execute(
        "SELECT tier, count(*) FROM (SELECT tier FROM predictions WHERE candidate = $c "
        "AND version IS NOT DISTINCT FROM $v AND tier IS NOT NULL "
        "AND ($since IS NULL OR predicted_at >= $since) "
        "ORDER BY predicted_at DESC, event_id DESC LIMIT $latest) GROUP BY tier",
        {"c": candidate, "v": version, "since": since, "latest": latest}).fetchall()
    return {str(tier): int(n) for tier, n in rows}


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value
