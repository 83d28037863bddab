"""The rollout as data: what ``shadow rollout status`` shows and the control API serves,
and one line for a transition. The CLI and the daemon both render from here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollout import audit
from rollout.controller import Assessment, Controller
from rollout.state import Transition
from shadow.config.rollout import RolloutSpec
from shadow.config.tiers import Tier
from shadow.store.database import Store
from shadow.store.reviews import tier_counts

RECENT = 1000
"""How many of the latest predictions the tier shares of ``status`` are taken over."""


def status_view(controller: Controller, a: Assessment, stored: dict[str, Any],
                last_transition: dict[str, Any] | None) -> dict[str, Any]:
    """What ``status`` shows, as data (the control API serves the same)."""
    s, plan = a.state, controller.plan
    return {
        "rollout": s.rollout, "candidate": s.candidate, "version": s.version,
        "step": s.step, "steps": len(plan.steps), "percent": s.percent,
        "status": s.status.value, "live": s.live,
        "live_share": controller.router().live_share, "holdout": plan.holdout,
        "review": plan.review, "step_started_at": s.step_started_at.isoformat(),
        "promotion": a.promotion.as_dict() if a.promotion else None,
        "rollback": a.rollback.as_dict() if a.rollback else None,
        "stored_evaluations": stored, "last_transition": last_transition,
        "evidence": evidence_view(controller, a),
        "warnings": list(a.warnings),
        "tiers": tiers_view(plan, recent_tiers(controller.store, controller)),
    }


def evidence_view(controller: Controller, a: Assessment) -> dict[str, Any] | None:
    """What the gates counted: the unit, the label window, label delays by verdict, and
    how fast independent labels reach the rollback detector."""
    if a.stats is None:
        return None
    plan, units = controller.plan, a.stats.units
    detection = controller.detection(a.stats)
    detector = a.stats.detector
    return {
        "unit": plan.unit.value, "keys": units.keys, "past_label_window": units.mature,
        "labelled": units.labelled, "unlabelled_counted_against": units.pending,
        "expired": units.expired, "live_not_independent": units.dependent,
        "label_window_seconds": units.window.total_seconds(),
        "label_window_learned": plan.label_window == "auto",
        "data_clock": units.clock.isoformat() if units.clock else None,
        "label_delays": [
            {"verdict": "agree" if d.agreed else "disagree", "labelled": d.labelled,
             "median_seconds": d.median.total_seconds(), "p95_seconds": d.p95.total_seconds()}
            for d in a.delays],
        "detector": None if not a.state.live else {
            "independent_labels": detector.seen, "statistic": detector.statistic,
            "threshold": controller.detector.threshold_at(detector.seen),
            "alarmed_at": detector.alarmed_at,
            "per_day": detection.per_day if detection else None,
            "needed": detection.needed if detection else None,
            "in_time": detection.in_time if detection else None},
        "tiers": None if plan.tiers is None else {
            "fallen": list(a.state.fallen),
            "detectors": [h.as_dict() for h in controller.tier_health().values()]},
    }


def tiers_view(plan: RolloutSpec, counts: Mapping[str, int]) -> dict[str, Any] | None:
    """The tier policy in order, and the share of each tier among ``counts`` (the latest
    predictions' tiers). ``None`` without a policy."""
    spec = plan.tiers
    if spec is None:
        return None
    view: dict[str, Any] = {
        "rules": [{"rule": f"rules[{i}]", "tier": r.tier.value, "text": r.text()}
                  for i, r in enumerate(spec.rules)],
        "default": spec.default.value, "label_path": spec.label_path}
    total = sum(counts.values())
    view["recent"] = {"predictions": total, "of_latest": RECENT,
                      "shares": {t.value: counts.get(t.value, 0) / total if total else 0.0
                                 for t in Tier}}
    return view


def recent_tiers(store: Store, controller: Controller) -> dict[str, int]:
    """The tiers of the candidate's latest :data:`RECENT` assessed predictions."""
    return tier_counts(store, controller.candidate, controller.version, latest=RECENT)


def describe(t: Transition) -> str:
    before, after = t.before, t.after
    came = f"step {before.step} ({before.percent:g} %, {before.status.value})" if before else "-"
    return (f"{t.action.value}: {came} → step {after.step} ({after.percent:g} %, "
            f"{after.status.value}) by {audit.credited(t.actor, t.token)}: {t.reason}")
