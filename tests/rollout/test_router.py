"""The router: deterministic, sticky, monotone, order-independent, and the share it promises."""

from __future__ import annotations

import hashlib
import math
import random

import pytest

from rollout.router import BUCKETS, Router
from shadow.core.models import Mode

KEYS = [f"ticket-{i}" for i in range(40_000)]


def live_keys(router: Router, keys: list[str] = KEYS) -> set[str]:
    return {k for k in keys if router.route(k).mode is Mode.LIVE}


def binomial_band(n: int, p: float, z: float = 4.0) -> tuple[float, float]:
    """Where a binomial share lands with overwhelming probability (4 standard deviations)."""
    sd = math.sqrt(p * (1 - p) / n)
    return p - z * sd, p + z * sd


def test_the_same_key_always_gets_the_same_route() -> None:
    first = Router("salt", 25)
    again = Router("salt", 25)
    assert [first.route(k) for k in KEYS[:2000]] == [again.route(k) for k in KEYS[:2000]]


def test_arrival_order_does_not_matter() -> None:
    router = Router("salt", 25)
    shuffled = KEYS[:5000]
    random.Random(7).shuffle(shuffled)
    assert live_keys(router, shuffled) == live_keys(router, KEYS[:5000])


def test_raising_the_percent_never_takes_a_live_key_back() -> None:
    steps = [Router("salt", p, holdout=0.05) for p in (0, 1, 5, 25, 50, 100)]
    live = [live_keys(r) for r in steps]
    assert live[0] == set()
    for lower, higher in zip(live, live[1:], strict=False):
        assert lower <= higher
        assert len(higher) > len(lower)


@pytest.mark.parametrize("percent", [1, 5, 25, 50, 100])
def test_the_realised_live_share_matches_the_percent(percent: float) -> None:
    holdout = 0.05
    share = len(live_keys(Router("prod", percent, holdout=holdout))) / len(KEYS)
    low, high = binomial_band(len(KEYS), percent / 100 * (1 - holdout))
    assert low <= share <= high


def test_the_holdout_stays_with_the_humans_at_100_percent() -> None:
    router = Router("prod", 100, holdout=0.10)
    routes = [router.route(k) for k in KEYS]
    held = [r for r in routes if r.holdout]
    assert held and all(r.mode is Mode.SHADOW for r in held)
    assert all(r.mode is Mode.LIVE for r in routes if not r.holdout)
    low, high = binomial_band(len(KEYS), 0.10)
    assert low <= len(held) / len(KEYS) <= high


def test_the_holdout_is_the_same_keys_at_every_step() -> None:
    held = [{k for k in KEYS if Router("prod", p, holdout=0.1).route(k).holdout}
            for p in (0, 5, 100)]
    assert held[0] == held[1] == held[2]


def test_a_different_salt_reshuffles_the_keys() -> None:
    a, b = live_keys(Router("a", 50)), live_keys(Router("b", 50))
    overlap = len(a & b) / len(KEYS)
    low, high = binomial_band(len(KEYS), 0.25)  # independent halves overlap in a quarter
    assert low <= overlap <= high


def test_the_review_sample_is_a_share_of_live_decisions_only() -> None:
    router = Router("prod", 50, review=0.2)
    routes = [router.route(k) for k in KEYS]
    live = [r for r in routes if r.mode is Mode.LIVE]
    assert not any(r.review for r in routes if r.mode is Mode.SHADOW)
    low, high = binomial_band(len(live), 0.2)
    assert low <= sum(r.review for r in live) / len(live) <= high


def test_buckets_are_uniform() -> None:
    # Chi-squared over 20 equal bucket ranges; 99.9th percentile of chi2(19) is 43.8.
    from rollout.router import bucket

    counts = [0] * 20
    for k in KEYS:
        counts[bucket("prod", k) * 20 // BUCKETS] += 1
    expected = len(KEYS) / 20
    assert sum((c - expected) ** 2 / expected for c in counts) < 43.8


def test_the_bucket_is_a_keyed_blake2b_of_the_routing_key() -> None:
    from rollout.router import bucket

    digest = hashlib.blake2b(b"ticket-9", digest_size=8, key=b"prod").digest()
    assert bucket("prod", "ticket-9") == int.from_bytes(digest, "big") % 10_000


def test_percent_outside_0_to_100_is_refused() -> None:
    with pytest.raises(ValueError, match="percent"):
        Router("s", 101)
