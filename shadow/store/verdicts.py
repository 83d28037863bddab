"""Review verdicts (migration 15): a person approves, edits or rejects a proposal.

A proposal of tier ``review`` (:mod:`shadow.store.reviews`) is decided once: the first
verdict stored for its ``review_id`` wins, and in the same transaction the review's
``status`` becomes ``approved``, ``edited`` or ``rejected``. What a verdict publishes is
kept with it (``output``): the proposal's output for an approve, the reviewer's output
for an edit, nothing for a reject. An approve or edit is also the person's outcome for
the case (source ``review``, :data:`REVIEW_SOURCE`), so comparators and reports see it.

Verdicts arrive at least once (a source re-read after a restart, a reviewer who clicks
twice): a verdict identical to the stored one (same verdict, output and reviewer) adds
nothing; any other verdict for a decided review, or one for a review the store does not
hold, comes back with its :class:`Problem`, for the caller to dead-letter or refuse.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import orjson

from shadow.core.errors import ShadowError
from shadow.core.models import Outcome
from shadow.store.database import Store
from shadow.store.writes import WriteBatch, arrow_tables, insert

REVIEW_SOURCE = "review"
"""The outcome source of verdicts: independent for the gates only where reviewers are
blind to the proposal's confidence (``rollout.tiers.reviewers_blind``)."""

APPROVE, EDIT, REJECT = "approve", "edit", "reject"
STATUS = {APPROVE: "approved", EDIT: "edited", REJECT: "rejected"}
"""The review's ``status`` once its verdict is stored."""
_NAMES = {**{v: v for v in STATUS}, **{s: v for v, s in STATUS.items()}}


def verdict_named(value: Any) -> str | None:
    """``approve``, ``edit`` or ``reject`` for that word or its past tense (``approved``),
    in any case; ``None`` for anything else."""
    return _NAMES.get(value.strip().lower()) if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reviewer's verdict on one proposal, as it arrived.

    ``verdict`` is ``approve``, ``edit`` or ``reject`` (past tenses are accepted and
    normalised); ``output`` is the edited output of an edit, ignored otherwise.
    ``source`` and ``position`` say where it was read (``position`` is ``None`` for
    the control API).
    """

    review_id: str
    verdict: str
    output: Any
    reviewer: str | None
    decided_at: datetime
    source: str
    position: str | None

    def __post_init__(self) -> None:
        named = verdict_named(self.verdict)
        if named is not None:
            object.__setattr__(self, "verdict", named)


class ProblemKind(enum.StrEnum):
    INVALID = "invalid"
    """The verdict itself is malformed: an unknown word, an edit without its output."""
    UNKNOWN = "unknown"
    """No review has this ``review_id``."""
    DECIDED = "decided"
    """The review already has another verdict."""
    CLOSED = "closed"
    """The review was withdrawn (a rollback) before anyone decided it."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a verdict was not stored; ``str()`` is the reason a dead letter keeps."""

    kind: ProblemKind
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class _Review:
    key: str
    status: str
    output: Any


@dataclass(frozen=True, slots=True)
class _Decided:
    verdict: str
    output: Any
    reviewer: str | None


def record_verdicts(store: Store, verdicts: Sequence[Verdict], *,
                    received_at: datetime) -> list[tuple[Verdict, Problem | None]]:
    """Store the verdicts that decide an open review, in one transaction, with the
    reviews' new status and the outcomes of approves and edits.

    Returns every verdict with ``None`` (stored, or identical to the stored one) or
    the problem that kept it out.

    Raises:
        StoreError: DuckDB refused; nothing was written.
    """
    if not verdicts:
        return []
    ids = sorted({v.review_id for v in verdicts})
    answers: list[tuple[Verdict, Problem | None]] = []
    with store.transaction() as tx:
        found = _reviews(tx, ids)
        decided = _decided(tx, ids)
        outcomes: list[tuple[Outcome, str, str]] = []
        for v in verdicts:
            problem = _invalid(v) or _refused(v, found, decided)
            answers.append((v, problem))
            if problem is not None or v.review_id in decided:
                continue
            review = found[v.review_id]
            output = _published(v, review)
            decided[v.review_id] = _Decided(v.verdict, output, v.reviewer)
            tx.execute(
                "INSERT INTO review_verdicts (review_id, verdict, output, reviewer, decided_at, "
                "received_at, source, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [v.review_id, v.verdict, None if v.verdict == REJECT else _dumps(output),
                 v.reviewer, v.decided_at, received_at, v.source, v.position])
            tx.execute("UPDATE reviews SET status = ? WHERE review_id = ?",
                       [STATUS[v.verdict], v.review_id])
            if v.verdict != REJECT:
                outcome = Outcome(key=review.key, outcome=output, decided_at=v.decided_at,
                                  actor=v.reviewer)
                outcomes.append((outcome, REVIEW_SOURCE, v.review_id))
        if outcomes:
            insert(tx, arrow_tables(WriteBatch(outcomes=outcomes)))
    return answers


def _invalid(v: Verdict) -> Problem | None:
    if v.verdict not in STATUS:
        return Problem(ProblemKind.INVALID, f"verdict: expected approve, edit or reject "
                                            f"(or approved, edited, rejected), got {v.verdict!r}")
    if v.verdict == EDIT and v.output is None:
        return Problem(ProblemKind.INVALID, f"review {v.review_id!r}: an edit needs the edited "
                                            f"output")
    return None


def _refused(v: Verdict, found: dict[str, _Review],
             decided: dict[str, _Decided]) -> Problem | None:
    review = found.get(v.review_id)
    if review is None:
        return Problem(ProblemKind.UNKNOWN, f"no review {v.review_id!r}: the review_id is "
                                            f"not one the rollout proposed")
    before = decided.get(v.review_id)
    if before is not None:
        if before == _Decided(v.verdict, _published(v, review), v.reviewer):
            return None  # the same verdict again: nothing to add
        return Problem(ProblemKind.DECIDED, f"review {v.review_id!r} already has a verdict "
                                            f"({before.verdict})")
    if review.status != "open":
        return Problem(ProblemKind.CLOSED, f"review {v.review_id!r} is {review.status}: the "
                                           f"proposal was taken back before a verdict")
    return None


def _published(v: Verdict, review: _Review) -> Any:
    return {APPROVE: review.output, EDIT: v.output, REJECT: None}[v.verdict]


def _reviews(tx: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, _Review]:
    rows = tx.execute("SELECT review_id, key, status, proposal FROM reviews "
                      "WHERE review_id IN (SELECT unnest(?))", [ids]).fetchall()
    return {r[0]: _Review(r[1], r[2], orjson.loads(r[3]).get("output")) for r in rows}


def _decided(tx: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, _Decided]:
    rows = tx.execute("SELECT review_id, verdict, output, reviewer FROM review_verdicts "
                      "WHERE review_id IN (SELECT unnest(?))", [ids]).fetchall()
    return {r[0]: _Decided(r[1], _loads(r[2]), r[3]) for r in rows}


# -- the review page and the API ------------------------------------------------------


class VerdictRefused(ShadowError):
    """A verdict given through the API that was not stored; ``problem`` says why."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.reason)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    """The verdict a review has, with the review's status and when it was published."""

    review_id: str
    verdict: str
    status: str
    output: Any
    reviewer: str | None
    decided_at: datetime
    source: str
    published_at: datetime | None


def stored_verdict(store: Store, review_id: str) -> StoredVerdict | None:
    row = store.db.execute(
        "SELECT v.review_id, v.verdict, r.status, v.output, v.reviewer, v.decided_at, v.source, "
        "v.published_at FROM review_verdicts v JOIN reviews r USING (review_id) "
        "WHERE v.review_id = ?", [review_id]).fetchone()
    if row is None:
        return None
    return StoredVerdict(row[0], row[1], row[2], _loads(row[3]), row[4], row[5], row[6], row[7])


def decide(store: Store, verdict: Verdict, *, received_at: datetime) -> StoredVerdict:
    """Store one verdict (or find the same one stored) and return the review's verdict.

    Raises:
        VerdictRefused: the verdict has a problem (its ``kind`` says which).
    """
    [(_, problem)] = record_verdicts(store, [verdict], received_at=received_at)
    if problem is not None:
        raise VerdictRefused(problem)
    found = stored_verdict(store, verdict.review_id)
    assert found is not None
    return found


@dataclass(frozen=True, slots=True)
class OpenReview:
    """A live proposal waiting for its verdict; ``proposal`` is the message the review sink
    received, with its evidence."""

    review_id: str
    event_id: str
    key: str
    candidate: str
    version: str | None
    rollout: str
    step: int | None
    proposed_at: datetime
    published_at: datetime | None
    proposal: dict[str, Any]


def open_reviews(store: Store, *, candidate: str | None = None,
                 limit: int) -> list[OpenReview]:
    """The oldest ``limit`` live proposals without a verdict (withdrawn ones excluded),
    of ``candidate`` when given."""
    rows = store.db.execute(
        "SELECT review_id, event_id, key, candidate, version, rollout, rollout_step, "
        "proposed_at, published_at, proposal FROM reviews "
        "WHERE status = 'open' AND mode = 'live' AND ($candidate IS NULL OR candidate = "
        "$candidate) ORDER BY proposed_at, review_id LIMIT $limit",
        {"candidate": candidate, "limit": limit}).fetchall()
    return [OpenReview(review_id=r[0], event_id=r[1], key=r[2], candidate=r[3], version=r[4],
                       rollout=r[5], step=r[6], proposed_at=r[7], published_at=r[8],
                       proposal=orjson.loads(r[9])) for r in rows]


# -- the outbox of approved and edited live proposals ---------------------------------


@dataclass(frozen=True, slots=True)
class Approved:
    """An approved or edited live proposal not yet on the action sink."""

    review_id: str
    verdict: str
    output: Any
    """What is published: the proposal's output, or the reviewer's edit."""
    reviewer: str | None
    decided_at: datetime
    proposal: dict[str, Any]


def unpublished(store: Store, rollout: str, limit: int) -> list[Approved]:
    """The oldest ``limit`` approved or edited live proposals of ``rollout`` that the
    action sink does not have yet, in the order their verdicts arrived."""
    rows = store.db.execute(
        "SELECT v.review_id, v.verdict, v.output, v.reviewer, v.decided_at, r.proposal "
        "FROM review_verdicts v JOIN reviews r USING (review_id) "
        "WHERE v.verdict IN ('approve', 'edit') AND v.published_at IS NULL "
        "AND r.mode = 'live' AND r.rollout = ? ORDER BY v.received_at, v.review_id LIMIT ?",
        [rollout, limit]).fetchall()
    return [Approved(r[0], r[1], _loads(r[2]), r[3], r[4], orjson.loads(r[5])) for r in rows]


def mark_published(store: Store, review_ids: Sequence[str], at: datetime) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE review_verdicts SET published_at = ? "
                   "WHERE review_id IN (SELECT unnest(?))", [at, list(review_ids)])


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value
