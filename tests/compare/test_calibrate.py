"""``shadow calibrate``, run for real in subprocesses through :func:`shadow.cli.main.main`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shadow.compare.calibrate import measure

ROOT = Path(__file__).resolve().parents[2]

# Comparator verdict first: (comparator same?, human same?) -> how many.
BOTH_SAME, SAME_DIFFERENT, DIFFERENT_SAME, BOTH_DIFFERENT = 20, 3, 5, 12


def verdict_lines() -> list[str]:
    """With the exact comparator, output == outcome is 'same' and anything else 'different'."""
    same, different = {"output": "billing", "outcome": "billing"}, \
        {"output": "billing", "outcome": "login"}
    rows = ([{**same, "human": "same"}] * BOTH_SAME
            + [{**same, "human": "different"}] * SAME_DIFFERENT
            + [{**different, "human": "same"}] * DIFFERENT_SAME
            + [{**different, "human": "different"}] * BOTH_DIFFERENT)
    return [json.dumps(row) for row in rows]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from shadow.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, "calibrate", *args], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def verdicts(tmp_path: Path) -> Path:
    path = tmp_path / "verdicts.jsonl"
    path.write_text("\n".join(verdict_lines()) + "\n", encoding="utf-8")
    return path


def test_metrics_match_a_hand_computed_kappa(tmp_path: Path, verdicts: Path) -> None:
    n = BOTH_SAME + SAME_DIFFERENT + DIFFERENT_SAME + BOTH_DIFFERENT
    po = (BOTH_SAME + BOTH_DIFFERENT) / n  # 32 / 40 = 0.8
    comparator_same, human_same = BOTH_SAME + SAME_DIFFERENT, BOTH_SAME + DIFFERENT_SAME
    pe = (comparator_same / n) * (human_same / n) \
        + ((n - comparator_same) / n) * ((n - human_same) / n)  # 0.51875
    kappa = (po - pe) / (1 - pe)  # 0.58442

    done = run(tmp_path, str(verdicts), "--compare", "exact", "--format", "json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n"] == n
    assert result["both_same"] == BOTH_SAME and result["both_different"] == BOTH_DIFFERENT
    assert result["comparator_same_human_different"] == SAME_DIFFERENT
    assert result["comparator_different_human_same"] == DIFFERENT_SAME
    assert result["accuracy"] == pytest.approx(po)
    assert result["kappa"] == pytest.approx(kappa)
    assert result["kappa"] == pytest.approx(0.584416, abs=1e-6)
    assert result["reaches_min_agreement"] is False


def test_the_table_says_whether_it_reaches_the_bar(tmp_path: Path, verdicts: Path) -> None:
    done = run(tmp_path, str(verdicts), "--compare", "exact")
    assert done.returncode == 0
    assert "80.0 %" in done.stdout and "0.584" in done.stdout
    assert "below the 85 % agreement" in done.stdout

    lower = run(tmp_path, str(verdicts), "--compare", "exact", "--min-agreement", "0.75")
    assert "reaches the 75 % agreement" in lower.stdout


def test_strict_exits_3_below_the_minimum(tmp_path: Path, verdicts: Path) -> None:
    assert run(tmp_path, str(verdicts), "--strict").returncode == 3
    assert run(tmp_path, str(verdicts), "--strict", "--min-agreement", "0.8").returncode == 0


def test_the_configured_comparator_is_used(tmp_path: Path) -> None:
    (tmp_path / "shadow.yaml").write_text("version: 1\ncomparator: {kind: normalized}\n",
                                          encoding="utf-8")
    (tmp_path / "v.jsonl").write_text(
        json.dumps({"output": " Billing", "outcome": "billing", "human": "same"}) + "\n",
        encoding="utf-8")
    done = run(tmp_path, "v.jsonl", "--config", "shadow.yaml", "--format", "json")
    assert json.loads(done.stdout)["both_same"] == 1


@pytest.mark.parametrize("line", [
    '{"output": 1, "outcome": 1, "human": "maybe"}', '{"output": 1}', "not json"])
def test_a_bad_verdict_line_is_a_usage_error(tmp_path: Path, line: str) -> None:
    (tmp_path / "v.jsonl").write_text(line + "\n", encoding="utf-8")
    done = run(tmp_path, "v.jsonl")
    assert done.returncode == 2
    assert "v.jsonl:1" in done.stderr and len(done.stderr.splitlines()) == 1


def test_kappa_is_undefined_when_both_always_say_same() -> None:
    result = measure(10, 0, 0, 0)
    assert result.accuracy == 1.0 and result.kappa is None


def test_a_judge_that_cannot_be_reached_fails_the_run_instead_of_counting_as_different(
    tmp_path: Path, verdicts: Path,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "shadow.yaml").write_text(
        f"version: 1\ncomparator: {{kind: judge, base_url: 'http://127.0.0.1:{port}/v1', "
        "model: m, max_attempts: 1, timeout_s: 2, cache: false}\n", encoding="utf-8")
    done = run(tmp_path, str(verdicts), "--config", "shadow.yaml")
    assert done.returncode == 1, done.stderr
    assert "the comparator gave no verdict" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
