"""The rollout's state, transitions and gate evaluations, kept in the store.

A transition and the state it leads to are written in one transaction, and
only over the state it was made from (its revision), so two writers can never
interleave their changes: the loser gets :class:`Refused` and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from rollout.gates import Evaluation
from rollout.state import CONTROLLER, Action, Refused, RolloutState, Status, Transition
from shadow.store.database import Store

_STATE_COLUMNS = ("rollout, candidate, version, step, percent, status, step_started_at, "
                  "updated_at, revision, fallen_tiers")


def load(store: Store, rollout: str) -> RolloutState | None:
    rows = store.db.execute(
        f"SELECT {_STATE_COLUMNS} FROM rollout_state WHERE rollout = ?",  # noqa: S608
        [rollout]).fetchall()
    if not rows:
        return None
    r = rows[0]
    return RolloutState(rollout=r[0], candidate=r[1], version=r[2], step=r[3], percent=r[4],
                        status=Status(r[5]), step_started_at=r[6], updated_at=r[7],
                        revision=r[8], fallen=tuple(r[9] or ()))


def save(store: Store, t: Transition) -> None:
    """Write the transition's new state and its audit record, atomically.

    Raises:
        Refused: the stored state is no longer the one the transition was made from.
    """
    s = t.after
    with store.transaction() as tx:
        stored = tx.execute("SELECT revision FROM rollout_state WHERE rollout = ?",
                            [s.rollout]).fetchall()
        expected = t.before.revision if t.before is not None else None
        found = stored[0][0] if stored else None
        if found != expected:
            raise Refused(f"rollout {s.rollout!r} changed meanwhile (revision {found}, "
                          f"expected {expected}); look at its status and try again")
        tx.execute("DELETE FROM rollout_state WHERE rollout = ?", [s.rollout])
        tx.execute(
            f"INSERT INTO rollout_state ({_STATE_COLUMNS}) "  # noqa: S608
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [s.rollout, s.candidate, s.version, s.step, s.percent, s.status.value,
             s.step_started_at, s.updated_at, s.revision, list(s.fallen)])
        before = t.before
        tx.execute(
            "INSERT INTO rollout_audit (rollout, revision, changed_at, actor, action, from_step, "
            "to_step, from_status, to_status, percent, reason, evidence, token) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [s.rollout, s.revision, t.at, t.actor, t.action.value,
             before.step if before else None, s.step,
             before.status.value if before else None, s.status.value, s.percent, t.reason,
             _json(t.evidence), t.token])


NOT_RECORDED = ""
"""The token of a person's command recorded before the trail kept token names."""


def credited(actor: str, token: str | None) -> str:
    """Who made a transition, as far as the trail vouches for it.

    ``token`` is the name of the API token the command came with (checked by the
    daemon); ``actor`` only what the caller claimed, and labelled so.

        >>> credited("ana", "ops")
        'ana (claimed, token ops)'
        >>> credited("ana", None)
        'ana (claimed, local)'
    """
    if token is None and actor == CONTROLLER:
        return CONTROLLER
    if token is None:
        return f"{actor} (claimed, local)"
    if token == NOT_RECORDED:
        return f"{actor} (claimed, token not recorded)"
    return f"{actor} (claimed, token {token})"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    revision: int
    at: datetime
    actor: str
    action: Action
    from_step: int | None
    to_step: int
    from_status: Status | None
    to_status: Status
    percent: float
    reason: str
    evidence: dict[str, Any]
    token: str | None = None
    """The API token's name; ``None`` for a local command or the controller's own,
    ``NOT_RECORDED`` for a command recorded before token names were kept."""

    def as_dict(self) -> dict[str, Any]:
        """``actor`` is as claimed; ``token`` the name the daemon checked."""
        return {
            "revision": self.revision, "at": self.at.isoformat(), "actor": self.actor,
            "token": self.token,
            "action": self.action.value, "from_step": self.from_step, "to_step": self.to_step,
            "from_status": self.from_status.value if self.from_status else None,
            "to_status": self.to_status.value, "percent": self.percent, "reason": self.reason,
            "evidence": self.evidence,
        }


def history(store: Store, rollout: str, limit: int | None = None) -> list[AuditRecord]:
    """Transitions, oldest first (the last ``limit`` of them when given)."""
    rows = store.db.execute(
        "SELECT revision, changed_at, actor, action, from_step, to_step, from_status, to_status, "
        "percent, reason, evidence, token FROM rollout_audit WHERE rollout = ? "
        "ORDER BY revision DESC LIMIT ?", [rollout, limit if limit is not None else 2**62],
    ).fetchall()
    return [
        AuditRecord(r[0], r[1], r[2], Action(r[3]), r[4], r[5],
                    Status(r[6]) if r[6] else None, Status(r[7]), r[8], r[9],
                    orjson.loads(r[10]) if r[10] else {}, r[11])
        for r in reversed(rows)
    ]


def record_evaluation(store: Store, state: RolloutState, kind: str, evaluation: Evaluation,
                      at: datetime) -> None:
    store.db.execute(
        "INSERT INTO gate_evaluations (rollout, evaluated_at, step, percent, kind, phase, "
        "evidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [state.rollout, at, state.step, state.percent, kind, evaluation.phase.value,
         _json(evaluation.as_dict())])


def latest_evaluations(store: Store, rollout: str) -> dict[str, dict[str, Any]]:
    """The most recent evaluation of each kind (promotion, rollback), with when and where."""
    rows = store.db.execute(
        "SELECT kind, evaluated_at, step, percent, evidence FROM gate_evaluations "
        "WHERE rollout = ? QUALIFY row_number() OVER (PARTITION BY kind "
        "ORDER BY evaluated_at DESC) = 1", [rollout]).fetchall()
    return {
        r[0]: {"evaluated_at": r[1].isoformat(), "step": r[2], "percent": r[3],
               **orjson.loads(r[4])}
        for r in rows
    }


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value, default=str).decode()
