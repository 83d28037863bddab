"""``shadow eval`` and ``shadow calibrate`` through the real command line."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.test_cli import run

GOLDEN = Path(__file__).resolve().parents[1] / "configs" / "golden"


def test_the_example_golden_set_passes_its_gate_and_writes_junit(tmp_path: Path) -> None:
    golden = [json.loads(line) for line in
              (GOLDEN / "tickets.jsonl").read_text(encoding="utf-8").splitlines() if line]
    result = run(tmp_path, "eval", str(GOLDEN / "tickets.jsonl"), "--config",
                 str(GOLDEN / "golden.yaml"), "--baseline", str(GOLDEN / "baseline.json"),
                 "--fail-below", "0.85", "--max-drop", "2", "--junit", "eval.xml")
    assert result.returncode == 0, result.stderr
    assert "result: pass" in result.stdout
    suite = ET.parse(tmp_path / "eval.xml").getroot()
    if suite.tag == "testsuites":
        (suite,) = list(suite)
    # One test case per golden case, and one per gate.
    assert int(suite.get("tests", "0")) == len(golden) + 2


def test_a_floor_above_the_agreement_fails_with_exit_code_3(tmp_path: Path) -> None:
    result = run(tmp_path, "eval", str(GOLDEN / "tickets.jsonl"), "--config",
                 str(GOLDEN / "golden.yaml"), "--fail-below", "0.99")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
