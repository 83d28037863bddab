"""The router: for every event, ``live`` (the AI acts) or ``shadow``.

A routing key hashes, with the rollout's salt, into one of 10,000 buckets.
The top ``holdout`` buckets always stay with the humans; of the rest, the
lowest ``percent`` share is live. So the decision is deterministic, sticky
(the same key always lands in the same bucket), monotone (a key live at 5 %
is live at 25 %, since the live range only grows) and independent of arrival
order. A second hash, with its own salt, picks the review sample among live
keys, so raising the percent does not reshuffle who is reviewed either.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NamedTuple

from shadow.core.models import Mode

if TYPE_CHECKING:
    from rollout.state import RolloutState
    from shadow.config.rollout import RolloutSpec

BUCKETS = 10_000


class Route(NamedTuple):
    mode: Mode
    holdout: bool = False
    review: bool = False


SHADOW = Route(Mode.SHADOW)


def bucket(salt: str, routing_key: str) -> int:
    """The key's bucket in ``[0, 10000)``: BLAKE2b of salt and key, so no salt
    can be chosen to steer particular keys, and buckets are uniform."""
    digest = hashlib.blake2b(routing_key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") % BUCKETS


class Router:
    """Routes by a fixed percent; the controller swaps in a new router to change it.

    ``percent`` is a share of the routable traffic, which excludes the holdout,
    so 100 % leaves the holdout with the humans.
    """

    __slots__ = ("salt", "percent", "holdout", "review", "_holdout_from", "_live_below",
                 "_review_below", "_review_salt")

    def __init__(self, salt: str, percent: float, *, holdout: float = 0.0,
                 review: float = 0.0) -> None:
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"percent must be within 0..100, got {percent}")
        if not 0.0 <= holdout < 1.0 or not 0.0 <= review <= 1.0:
            raise ValueError("holdout must be within [0, 1) and review within [0, 1]")
        self.salt, self.percent, self.holdout, self.review = salt, percent, holdout, review
        self._holdout_from = BUCKETS - round(holdout * BUCKETS)
        self._live_below = round(percent / 100 * self._holdout_from)
        self._review_below = round(review * BUCKETS)
        self._review_salt = salt + "/review"

    def route(self, routing_key: str) -> Route:
        b = bucket(self.salt, routing_key)
        if b >= self._holdout_from:
            return Route(Mode.SHADOW, holdout=True)
        if b >= self._live_below:
            return SHADOW
        review = self._review_below > 0 and bucket(self._review_salt, routing_key) < \
            self._review_below
        return Route(Mode.LIVE, review=review)

    @property
    def live_share(self) -> float:
        """The expected share of all traffic routed live."""
        return self._live_below / BUCKETS


def router_for(plan: RolloutSpec, state: RolloutState) -> Router:
    """The router of ``state``: its percent while it is live, else nothing live.

    The controller routes by it, and so does every candidate worker following the state."""
    return Router(plan.salt or state.rollout, state.percent if state.live else 0.0,
                  holdout=plan.holdout, review=plan.review)
