"""Each tier's agreement in the current step, and the alarm that makes a tier fall back.

The rollout's gates judge the candidate as a whole; a policy of tiers also lets it act
on some decisions (``auto``) and propose others (``review``), and either can break
while the whole still holds (the refunds the AI proposes go wrong while its tags stay
right). So each tier that can act or propose is watched by its own CUSUM, the same
detector the rollback uses (:func:`rollout.gates.detector`: the plan's healthy and
degraded levels, its false-alarm budget and horizon), fed with that tier's units in
the order their labels were decided.

A tier's units are counted like the gates count theirs: one per key, the key's first
usable prediction of the step (kept when its tier is the one watched), judged by its
comparison with the person's outcome; a unit routed live counts only when that outcome
came from an independent source (:class:`rollout.units.Independence`: a live decision
may be echoed by the outcome), a shadow one, or one of the review sample, always. The
sequence is read again from the store at each evaluation, so a restarted daemon judges
exactly what a running one would.

When a tier alarms, the controller makes a ``tier_fallback`` transition, audited like a
rollback: from then on that tier's decisions take the next more careful tier that has
not fallen (``auto`` → ``review`` → ``human``), pending decisions of the fallen tier are
withdrawn, and only a person's restart brings the tier back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollout.statistics import Cusum, DetectorState
from rollout.units import Independence
from shadow.config.tiers import Tier
from shadow.store.database import Store

__all__ = ["TierHealth", "effective", "tier_health"]

WATCHED = (Tier.AUTO, Tier.REVIEW)
"""The tiers that act or propose, and can fall back; ``human`` is where fallbacks end."""

_UNITS = """
WITH firsts AS (
    SELECT p.event_id, e.key, p.tier, p.mode = 'shadow' OR p.review AS always
    FROM predictions p JOIN events e USING (event_id)
    WHERE p.candidate = $candidate AND p.version IS NOT DISTINCT FROM $version
      AND p.predicted_at >= $since AND p.error_type IS NULL AND NOT p.abstained
    QUALIFY row_number() OVER (PARTITION BY e.key ORDER BY p.predicted_at, p.event_id) = 1
), labels AS (
    SELECT event_id, agree, outcome_decided_at FROM comparisons
    WHERE candidate = $candidate AND version IS NOT DISTINCT FROM $version
      AND comparator = $comparator
    QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY outcome_decided_at) = 1
)
SELECT f.tier, f.always, l.agree,
       (SELECT any_value(o.source) FROM outcomes o
        WHERE o.key = f.key AND o.decided_at = l.outcome_decided_at) AS source
FROM firsts f JOIN labels l USING (event_id)
WHERE f.tier IN ('auto', 'review')
ORDER BY l.outcome_decided_at, f.event_id
"""


@dataclass(frozen=True, slots=True)
class TierHealth:
    """One tier's units in the step and where its detector stands."""

    tier: Tier
    units: int
    """Counted units: labelled, and independent where live."""
    agreed: int
    left_out: int
    """Live units whose outcome came from a source not declared independent."""
    detector: DetectorState
    threshold: int

    @property
    def alarmed(self) -> bool:
        return self.detector.alarmed_at is not None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.units if self.units else None

    def as_dict(self) -> dict[str, Any]:
        return {"tier": self.tier.value, "units": self.units, "agreed": self.agreed,
                "agreement": self.agreement, "left_out": self.left_out,
                "statistic": self.detector.statistic, "threshold": self.threshold,
                "alarmed_at": self.detector.alarmed_at}


def tier_health(store: Store, *, candidate: str, version: str | None, comparator: str,
                since: Any, detector: Cusum, independence: Independence
                ) -> dict[Tier, TierHealth]:
    """Each watched tier's units of the step that began at ``since``, fed to a fresh
    ``detector`` in the order their labels were decided."""
    rows = store.db.execute(_UNITS, {"candidate": candidate, "version": version,
                                     "since": since, "comparator": comparator}).fetchall()
    agreements: dict[Tier, list[bool]] = {tier: [] for tier in WATCHED}
    left_out = dict.fromkeys(WATCHED, 0)
    for tier, always, agree, source in rows:
        watched = Tier(tier)
        if always or independence(source):
            agreements[watched].append(bool(agree))
        else:
            left_out[watched] += 1
    return {tier: TierHealth(tier, len(seen), sum(seen), left_out[tier],
                             detector.advance(DetectorState(), seen),
                             detector.threshold_at(len(seen)))
            for tier, seen in agreements.items()}


def effective(tier: Tier, fallen: Sequence[str]) -> Tier:
    """The tier a decision of ``tier`` takes once the tiers in ``fallen`` fell back: the
    next more careful one that has not fallen."""
    order = (Tier.AUTO, Tier.REVIEW, Tier.HUMAN)
    index = order.index(tier)
    while order[index] is not Tier.HUMAN and order[index].value in fallen:
        index += 1
    return order[index]
