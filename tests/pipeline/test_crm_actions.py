"""configs/crm-actions.yaml replayed by ``shadow replay``: the agent's actions and the
people's field changes stored as actions, checked against the sample files read here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from shadow.core.models import Event

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "crm-actions.yaml"
LEADS = ROOT / "configs" / "samples" / "crm-leads.jsonl"
CHANGES = ROOT / "configs" / "samples" / "crm-changes.jsonl"
CANDIDATE = "tests.pipeline.test_crm_actions:crm_agent"

_REGIONS = {"DE": "emea", "FR": "emea", "GB": "emea", "AT": "emea", "NO": "emea", "PT": "emea",
            "US": "amer", "CA": "amer", "AR": "amer"}


def proposal(lead: dict[str, Any]) -> dict[str, Any]:
    """The fields the agent would set on a lead: priority by size, owner by region and size."""
    employees = lead["employees"]
    priority = "high" if employees >= 1000 else "medium" if employees >= 100 else "low"
    team = "enterprise" if employees >= 1000 else "smb"
    return {"priority": priority, "owner": f"{_REGIONS.get(lead['country'], 'apac')}-{team}"}


def crm_agent(event: Event) -> dict[str, Any]:
    """The candidate of configs/crm-actions.yaml: proposes one update of the lead."""
    arguments = proposal(event.payload)
    return {"label": arguments["priority"],
            "actions": [{"tool": "update_record", "arguments": arguments}]}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The store after the example's replay command, run twice; and both outputs."""
    db = tmp_path_factory.mktemp("crm") / "crm.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    command = [sys.executable, "-m", "shadow", "replay", str(LEADS), "--outcomes", str(CHANGES),
               "--config", str(CONFIG), "--candidate", CANDIDATE, "--db", str(db)]
    outputs = []
    for _ in range(2):
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    return db, outputs


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(db), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def test_every_lead_has_the_agents_update_stored_as_an_action(
    replayed: tuple[Path, list[str]],
) -> None:
    leads = {row["lead"]["id"]: row["lead"] for row in lines(LEADS)}

    stored = query(replayed[0], "SELECT event_id, candidate, ordinal, tool, arguments, valid "
                                "FROM actions WHERE side = 'prediction' ORDER BY event_id")

    assert [(e, c, o, t, orjson.loads(a), v) for e, c, o, t, a, v in stored] == [
        (lead_id, CANDIDATE, 0, "update_record", proposal(lead), True)
        for lead_id, lead in sorted(leads.items())]


def test_every_change_with_fields_is_the_persons_update(replayed: tuple[Path, list[str]]) -> None:
    changes = [row for row in lines(CHANGES) if "changes" in row]

    stored = query(replayed[0], "SELECT key, decided_at, ordinal, tool, arguments, valid "
                                "FROM actions WHERE side = 'outcome' ORDER BY key, decided_at")

    assert [(k, d, o, t, orjson.loads(a), v) for k, d, o, t, a, v in stored] == sorted(
        (row["objectId"], at(row["changedAt"]), 0, "update_record", row["changes"], True)
        for row in changes)
    assert len(stored) == len(lines(CHANGES)) - 1


def test_a_change_without_fields_is_a_dead_letter_naming_the_path(
    replayed: tuple[Path, list[str]],
) -> None:
    dead = query(replayed[0], "SELECT kind, position, reason FROM dead_letters")

    line = next(i for i, row in enumerate(lines(CHANGES), start=1) if "changes" not in row)
    assert dead == [("outcome", f"line {line}",
                     "missing field 'actions.arguments' (path 'changes')")]


def test_agreement_is_the_share_of_leads_whose_final_change_is_the_proposal(
    replayed: tuple[Path, list[str]],
) -> None:
    leads = {row["lead"]["id"]: row["lead"] for row in lines(LEADS)}
    final: dict[str, tuple[str, dict[str, Any]]] = {}
    for row in lines(CHANGES):
        if "changes" in row and row["changedAt"] >= final.get(row["objectId"], ("", {}))[0]:
            final[row["objectId"]] = (row["changedAt"], row["changes"])
    expected = sorted((key, proposal(leads[key]) == changes)
                      for key, (_, changes) in final.items())

    compared = query(replayed[0], "SELECT event_id, agree FROM comparisons ORDER BY event_id")

    assert compared == expected
    assert 0 < sum(agree for _, agree in expected) < len(expected)


def test_replaying_again_adds_nothing(replayed: tuple[Path, list[str]]) -> None:
    db, outputs = replayed
    leads, changes = lines(LEADS), lines(CHANGES)

    counts = query(db, "SELECT side, count(*) FROM actions GROUP BY side ORDER BY side")

    unique_leads = {row["lead"]["id"] for row in leads}
    assert counts == [("outcome", sum(1 for row in changes if "changes" in row)),
                      ("prediction", len(unique_leads))]
    assert query(db, "SELECT count(*) FROM predictions") == [(len(unique_leads),)]
    assert re.search(r"^predictions +0 ", outputs[1], re.M)
    assert re.search(rf"^outcomes read +{len(changes)} = stored 0 ", outputs[1], re.M)
