"""Live decisions that will never reach the sink: withdrawn, and why.

A live decision waits in the store until the sink takes it (the outbox of
:mod:`rollout.runtime`). When the rollout stops acting (a rollback, an abort,
a restart) or a decision has waited longer than ``max_decision_age``,
publishing it late would have production act on a case the AI no longer
owns, or on a stale one: it is withdrawn instead, kept in the store with the
time and the reason, and counted (``shadow_live_decisions_withdrawn``).
A decision of tier ``review`` waits as a proposal for the review sink instead
(:mod:`shadow.store.reviews`); an unpublished one is withdrawn alike, its
status ``withdrawn``.
"""

from __future__ import annotations

from datetime import datetime

import structlog

from shadow.store import reviews
from shadow.store.database import Store

log = structlog.get_logger(__name__)

_WITHDRAW = """
UPDATE predictions SET withdrawn_at = $at, withdrawn_reason = $reason
WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version AND mode = 'live'
  AND published_at IS NULL AND withdrawn_at IS NULL AND predicted_at < $before
  AND tier IS DISTINCT FROM 'review' AND ($tier IS NULL OR tier = $tier)
RETURNING event_id
"""


def withdraw(store: Store, candidate: str, version: str | None, *, reason: str,
             at: datetime, older_than: datetime | None = None, tier: str | None = None) -> int:
    """Withdraw the candidate's unpublished live decisions made before ``older_than``
    (all of them without it), and its unpublished live proposals; returns how many
    decisions (proposals are logged apart). With ``tier``, only that tier's: the
    decisions of tier ``auto``, or the proposals of tier ``review``."""
    before = older_than if older_than is not None else datetime.max.replace(tzinfo=at.tzinfo)
    rows = []
    if tier != "review":
        with store.transaction() as tx:
            rows = tx.execute(_WITHDRAW, {"at": at, "reason": reason, "candidate": candidate,
                                          "version": version, "before": before,
                                          "tier": tier}).fetchall()
    if rows:
        log.warning("live decisions withdrawn", candidate=candidate, count=len(rows),
                    reason=reason)
    if tier == "auto":
        return len(rows)
    proposals = reviews.withdraw(store, candidate, version, before=before)
    if proposals:
        log.warning("live proposals withdrawn", candidate=candidate, count=proposals,
                    reason=reason)
    return len(rows)
