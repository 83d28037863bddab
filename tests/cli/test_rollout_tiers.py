"""``shadow rollout status`` explains the tier policy: its rules in order and the share
of the latest predictions in each tier, after a replay in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import run, write_jsonl

CANDIDATE = '''
LABELS = ["billing", "login", "refund", "billing"]


def triage(event):
    i = event.payload["i"]
    return {"category": LABELS[i % 4], "confidence": 0.95 if i % 2 == 0 else 0.6}
'''

CONFIG = """
candidate: {callable: triage:triage, name: triage, version: "1"}
comparator: {kind: exact, prediction_path: category, outcome_path: category}
store: {path: shadow.duckdb}
rollout:
  steps: [{percent: 0}]
  tiers:
    rules:
      - {label: billing, confidence: {at_least: 0.9}, tier: auto}
      - {label: [billing, login], tier: review}
    default: human
"""
EVENTS = 40


def replayed(directory: Path) -> Path:
    (directory / "triage.py").write_text(CANDIDATE, encoding="utf-8")
    write_jsonl(directory / "events.jsonl", [
        {"event_id": f"e{i}", "key": f"t{i}", "occurred_at": "2026-01-01T00:00:00Z",
         "payload": {"i": i}} for i in range(EVENTS)])
    (directory / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    result = run(directory, "replay", "events.jsonl", "--quiet", SHADOW_CONFIG="shadow.yaml")
    assert result.returncode == 0, result.stderr
    return directory


def expected_counts() -> dict[str, int]:
    """By hand: i % 4 picks the label (0 and 3 billing, 1 login, 2 refund); even i are
    confident. Billing and confident (i % 4 == 0): auto; other billing and login: review."""
    counts = {"auto": 0, "review": 0, "human": 0}
    for i in range(EVENTS):
        if i % 4 == 0:
            counts["auto"] += 1
        elif i % 4 in (1, 3):
            counts["review"] += 1
        else:
            counts["human"] += 1
    return counts


def test_status_explains_the_policy_and_the_tier_shares(tmp_path: Path) -> None:
    directory = replayed(tmp_path)
    counts = expected_counts()
    assert counts == {"auto": 10, "review": 20, "human": 10}

    result = run(directory, "rollout", "status", "--format", "json",
                 SHADOW_CONFIG="shadow.yaml")
    assert result.returncode == 0, result.stderr
    tiers = json.loads(result.stdout)["tiers"]
    assert tiers["rules"] == [
        {"rule": "rules[0]", "tier": "auto",
         "text": "label billing; 0.9 <= confidence <= 1 → auto"},
        {"rule": "rules[1]", "tier": "review", "text": "label billing, login → review"}]
    assert (tiers["default"], tiers["label_path"]) == ("human", "category")
    assert tiers["recent"] == {"predictions": EVENTS, "of_latest": 1000, "shares": {
        tier: n / EVENTS for tier, n in counts.items()}}

    text = run(directory, "rollout", "status", SHADOW_CONFIG="shadow.yaml")
    assert text.returncode == 0, text.stderr
    assert ("  tiers (the first matching rule wins; labels at category):\n"
            "    rules[0]: label billing; 0.9 <= confidence <= 1 → auto\n"
            "    rules[1]: label billing, login → review\n"
            "    otherwise: human\n"
            "    latest 40 predictions: auto 25.0%, review 50.0%, human 25.0%") in text.stdout
