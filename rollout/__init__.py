"""Staged rollout: plan, gates, router and controller.

The spec (``shadow.config.rollout.RolloutSpec``: steps, gates, rollback) is what the
configuration asks for; the state (``RolloutState``) is what the store says happened. The
router splits traffic, ``rollout.units`` counts one unit per key (past its
label window, judged only by independent outcomes), ``rollout.gates`` judges
measurements, and ``rollout.controller.Controller`` moves the state and
audits every move.
"""

from rollout.router import Route, Router
from rollout.state import Action, Refused, RolloutError, RolloutState, Status

__all__ = ["Action", "Refused", "RolloutError", "RolloutState", "Route", "Router", "Status"]
