"""Staged rollout: plan, gates, router and controller."""
