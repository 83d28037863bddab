"""Proposals: what a decision of tier ``review`` sends a person, with its evidence.

A proposal is made once, when the rollout assesses a stored prediction, and stored
in ``reviews`` (:mod:`shadow.store.reviews`) as the very message a review sink
receives, so a republish after a restart sends the same bytes. Its ``review_id``
is a digest of rollout, event, candidate and version: a replay of the same events
proposes under the same ids, and verdicts come back keyed by it. The message::

    {"review_id": "rev_…", "event_id": "e1", "key": "T-1", "candidate": "desk",
     "version": "3", "rollout": "desk", "step": 1, "percent": 5.0, "mode": "live",
     "tier": "review", "rule": "rules[1]", "output": {…}, "confidence": 0.82,
     "actions": [{"tool": "send_reply", "arguments": {…}}],
     "evidence": {"subject": "Where is my parcel?"}, "predicted_at": "…+00:00"}

``evidence`` holds the payload fields the policy lists (``tiers.evidence``), after
its redaction, and leaves out those the event does not have. ``output`` never
carries the tool results of shadow runs (``tool_calls``), as on the action sink.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from connectors.sinks import Decision
from rollout.tiers import Assessment, Policy
from shadow.config.tiers import Tier
from shadow.core.actions import actions_of
from shadow.core.paths import MISSING, get_path
from shadow.core.redaction import redact
from shadow.store.reviews import Proposed, Unassessed

_SHADOW_ONLY = "tool_calls"


def review_id(rollout: str, event_id: str, candidate: str, version: str | None) -> str:
    """``rev_`` and 32 hex digits of SHA-256 over the JSON list of the four."""
    named = orjson.dumps([rollout, event_id, candidate, version])
    return "rev_" + hashlib.sha256(named).hexdigest()[:32]


def propose(row: Unassessed, assessment: Assessment, policy: Policy, *, rollout: str,
            candidate: str, version: str | None, percent: float) -> Proposed:
    """The proposal of a prediction assessed ``review``; ``percent`` is that of its step."""
    rid = review_id(rollout, row.event_id, candidate, version)
    output = row.output
    if isinstance(output, dict) and _SHADOW_ONLY in output:
        output = {name: value for name, value in output.items() if name != _SHADOW_ONLY}
    at = row.predicted_at.astimezone(UTC)
    message = {
        "review_id": rid, "event_id": row.event_id, "key": row.key, "candidate": candidate,
        "version": version, "rollout": rollout, "step": row.step or 0, "percent": percent,
        "mode": "live" if row.live else "shadow", "tier": assessment.tier.value,
        "rule": assessment.rule, "output": output, "confidence": row.confidence,
        "actions": [a.as_dict() for a in actions_of(row.output).actions],
        "evidence": evidence(row.payload, policy.spec.evidence, policy.spec.redact or ()),
        "predicted_at": at.isoformat(),
    }
    return Proposed(review_id=rid, key=row.key, rollout=rollout, live=row.live, step=row.step,
                    proposed_at=row.predicted_at, proposal=message, withdrawn=row.withdrawn)


def evidence(payload: Any, paths: Sequence[str], private: Sequence[str]) -> dict[str, Any]:
    """The payload's value at each path, after redaction; paths it lacks are left out."""
    shown = redact(payload, private)
    found = {path: get_path(shown, path) for path in paths}
    return {path: value for path, value in found.items() if value is not MISSING}


@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal(Decision):
    """A stored proposal on its way to the review sink.

    It rides the sink machinery of decisions (at-least-once, acks, fsync, signed
    webhooks), but its message is the stored proposal, keyed by ``review_id``:
    consumers dedupe by it, and a webhook's message id is made from it.
    """

    review_id: str
    proposal: dict[str, Any]

    @classmethod
    def stored(cls, review_id: str, proposal: dict[str, Any]) -> Proposal:
        """The proposal as stored in ``reviews``, ready for the review sink."""
        return cls(event_id=proposal["event_id"], key=proposal["key"],
                   candidate=proposal["candidate"], version=proposal["version"],
                   output=proposal["output"], rollout=proposal["rollout"],
                   step=proposal["step"], percent=proposal["percent"], review=True,
                   predicted_at=datetime.fromisoformat(proposal["predicted_at"]),
                   review_id=review_id, proposal=proposal)

    def body(self) -> bytes:
        return orjson.dumps(self.proposal)

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            ("review_id", self.review_id.encode()),
            ("event_id", self.event_id.encode()),
            ("candidate", self.candidate.encode()),
            ("version", (self.version or "").encode()),
            ("rollout", self.rollout.encode()),
            ("rollout_step", str(self.step).encode()),
            ("tier", Tier.REVIEW.value.encode()),
        ]

    @property
    def message_id(self) -> str:
        return "msg_" + self.review_id
