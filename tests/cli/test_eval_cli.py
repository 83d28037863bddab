"""``shadow eval`` and ``shadow calibrate`` through the real command line."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.cli.test_cli import run

GOLDEN = Path(__file__).resolve().parents[2] / "configs" / "golden"


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


def test_a_judge_that_cannot_be_reached_fails_the_evaluation_with_exit_code_1(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = (GOLDEN / "golden.yaml").read_text(encoding="utf-8").split("comparator:")[0]
    (tmp_path / "judged.yaml").write_text(
        config + f"comparator: {{kind: judge, base_url: 'http://127.0.0.1:{port}/v1', "
        "model: m, prediction_path: category, max_attempts: 1, timeout_s: 2, cache: false}\n",
        encoding="utf-8")
    result = run(tmp_path, "eval", str(GOLDEN / "tickets.jsonl"), "--config", "judged.yaml",
                 "--fail-below", "0.5")
    assert result.returncode == 1, result.stderr
    assert "the comparator gave no verdict on 40 golden cases" in result.stderr
    assert "Traceback" not in result.stderr and "result: pass" not in result.stdout
