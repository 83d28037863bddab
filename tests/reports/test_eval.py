"""``shadow eval``, run for real in subprocesses through :func:`shadow.cli.main.main`."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shadow.reports.golden_set import gates

ROOT = Path(__file__).resolve().parents[2]

# The candidate answers the label written in the payload, or raises when asked to.
CANDIDATE = '''\
__version__ = "2.0"


def answer(event):
    if event.payload.get("explode"):
        raise RuntimeError("boom")
    return {"category": event.payload["label"], "confidence": 0.9}
'''

CONFIG = """\
version: 1
comparator:
  kind: normalized
  prediction_path: category
"""

Run = Callable[..., subprocess.CompletedProcess[str]]


def golden_case(i: int, verdict: str) -> dict[str, Any]:
    """A case the candidate will get right (agree), wrong (disagree) or fail on (error)."""
    payload: dict[str, Any] = {"label": "billing"}
    if verdict == "error":
        payload["explode"] = True
    return {
        "event_id": f"e{i:02d}", "key": f"t{i:02d}", "occurred_at": "2024-05-06T08:00:00Z",
        "segment": {"language": "de" if i % 2 else "en"}, "payload": payload,
        "expected": "billing" if verdict == "agree" else "shipping",
    }


def golden(verdicts: list[str]) -> list[dict[str, Any]]:
    return [golden_case(i, verdict) for i, verdict in enumerate(verdicts)]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "evalcandidate.py").write_text(CANDIDATE, encoding="utf-8")
    (tmp_path / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    return tmp_path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def run(workdir: Path) -> Run:
    def run(*args: str, cwd: Path = workdir) -> subprocess.CompletedProcess[str]:
        code = "import sys; from shadow.cli.main import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run(
            [sys.executable, "-c", code, "eval", *args], cwd=cwd, capture_output=True,
            text=True, timeout=120, check=False,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        )

    return run


def eval_args(golden_file: Path, *more: str) -> list[str]:
    return [str(golden_file), "--candidate", "evalcandidate:answer",
            "--config", "shadow.yaml", *more]


def junit(path: Path) -> tuple[ET.Element, list[ET.Element]]:
    suites = ET.parse(path).getroot()
    assert suites.tag == "testsuites"
    (suite,) = suites.findall("testsuite")
    assert suite.get("name") == "shadow eval"
    return suite, suite.findall("testcase")


def test_a_passing_golden_set_exits_0_with_one_testcase_per_case(workdir: Path, run: Run) -> None:
    cases = golden(["agree"] * 9 + ["disagree"])
    path = write_jsonl(workdir / "golden.jsonl", cases)

    done = run(*eval_args(path, "--fail-below", "0.85", "--junit", "eval.xml", "--out", "r.json"))

    assert done.returncode == 0, done.stderr
    assert "90.0 %" in done.stdout and "language=de" in done.stdout
    suite, testcases = junit(workdir / "eval.xml")
    assert suite.get("tests") == str(len(cases) + 1)
    assert suite.get("failures") == "1" and suite.get("errors") == "0"
    assert [t.get("name") for t in testcases] == [c["event_id"] for c in cases] + [
        "agreement >= floor"]
    report = json.loads((workdir / "r.json").read_text())
    assert report["agreement"]["agreed"] == 9 and report["agreement"]["compared"] == 10
    assert report["version"] == "2.0" and report["errors"] == 0


def test_agreement_below_the_floor_exits_3_with_failures_and_errors(
    workdir: Path, run: Run
) -> None:
    verdicts = ["agree"] * 6 + ["disagree"] * 3 + ["error"]
    path = write_jsonl(workdir / "golden.jsonl", golden(verdicts))

    done = run(*eval_args(path, "--fail-below", "0.9", "--junit", "eval.xml"))

    assert done.returncode == 3, done.stderr
    assert "FAIL" in done.stdout
    suite, testcases = junit(workdir / "eval.xml")
    disagreements, errors = verdicts.count("disagree"), verdicts.count("error")
    assert suite.get("tests") == str(len(verdicts) + 1)
    assert suite.get("failures") == str(disagreements + 1)  # and the floor gate
    assert suite.get("errors") == str(errors)
    failure = testcases[6].find("failure")
    assert failure is not None
    assert failure.get("message") == 'expected "shipping", got {"category": "billing", ' \
        '"confidence": 0.9}'
    error = testcases[9].find("error")
    assert error is not None and "boom" in str(error.get("message"))
    gate = testcases[-1]
    assert gate.get("name") == "agreement >= floor" and gate.find("failure") is not None


def test_a_regression_against_the_baseline_exits_3_and_lists_changed_cases(
    workdir: Path, run: Run
) -> None:
    before = write_jsonl(workdir / "before.jsonl", golden(["agree"] * 10))
    assert run(*eval_args(before, "--out", "baseline.json")).returncode == 0
    after = write_jsonl(workdir / "after.jsonl",
                        golden(["agree"] * 8 + ["disagree", "error"]))

    done = run(*eval_args(after, "--baseline", "baseline.json", "--max-drop", "5",
                          "--fail-below", "0.5", "--junit", "eval.xml"))

    assert done.returncode == 3, done.stderr
    assert "e08  agree → disagree" in done.stdout
    assert "e09  agree → error" in done.stdout
    assert "e07" not in done.stdout
    suite, testcases = junit(workdir / "eval.xml")
    by_name = {t.get("name"): t for t in testcases}
    assert by_name["agreement >= floor"].find("failure") is None
    assert by_name["drop <= max"].find("failure") is not None
    assert suite.get("failures") == "2" and suite.get("errors") == "1"


def test_a_small_drop_within_the_allowance_passes(workdir: Path, run: Run) -> None:
    before = write_jsonl(workdir / "before.jsonl", golden(["agree"] * 20))
    assert run(*eval_args(before, "--out", "baseline.json")).returncode == 0
    after = write_jsonl(workdir / "after.jsonl", golden(["agree"] * 19 + ["disagree"]))

    done = run(*eval_args(after, "--baseline", "baseline.json", "--max-drop", "5"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "e19  agree → disagree" in done.stdout


def test_two_files_give_the_same_verdicts_as_one(workdir: Path, run: Run) -> None:
    cases = golden(["agree", "disagree", "error", "agree"])
    single = write_jsonl(workdir / "golden.jsonl", cases)
    events = write_jsonl(workdir / "events.jsonl",
                         [{k: v for k, v in c.items() if k != "expected"} for c in cases])
    outcomes = write_jsonl(workdir / "outcomes.jsonl", [
        {"key": c["key"], "outcome": c["expected"], "decided_at": "2024-05-07T08:00:00Z"}
        for c in cases])

    assert run(*eval_args(single, "--out", "one.json")).returncode == 0
    done = run(*eval_args(events, "--outcomes", str(outcomes), "--out", "two.json"))

    assert done.returncode == 0, done.stderr
    one, two = (json.loads((workdir / name).read_text()) for name in ("one.json", "two.json"))
    assert two["cases"] == one["cases"] == {
        "e00": "agree", "e01": "disagree", "e02": "error", "e03": "agree"}
    assert two["errors"] == 1


@pytest.mark.parametrize(("args", "says"), [
    (["--max-drop", "2"], "--max-drop needs --baseline"),
    (["--fail-below", "85"], "--fail-below"),
    (["--baseline", "missing.json"], "cannot read baseline"),
])
def test_usage_errors_exit_2_with_one_line(
    workdir: Path, run: Run, args: list[str], says: str
) -> None:
    path = write_jsonl(workdir / "golden.jsonl", golden(["agree"]))
    done = run(*eval_args(path, *args))
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.splitlines()) == 1


def test_a_line_without_expected_is_a_usage_error(workdir: Path, run: Run) -> None:
    case = golden(["agree"])[0]
    del case["expected"]
    done = run(*eval_args(write_jsonl(workdir / "golden.jsonl", [case])))
    assert done.returncode == 2
    assert "golden.jsonl:1" in done.stderr and "'expected'" in done.stderr


def test_the_shipped_golden_set_passes_against_its_baseline(run: Run) -> None:
    golden_dir = ROOT / "configs" / "golden"
    done = run(str(golden_dir / "tickets.jsonl"), "--candidate", "shadow.demo.candidate:classify",
               "--config", str(golden_dir / "golden.yaml"),
               "--baseline", str(golden_dir / "baseline.json"),
               "--fail-below", "0.85", "--max-drop", "2", cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "against the baseline (90.0 %): 0" in done.stdout


def test_the_drop_gate_is_in_percentage_points() -> None:
    (inside,) = gates(0.88, 0.90, fail_below=None, max_drop=2)
    (outside,) = gates(0.879, 0.90, fail_below=None, max_drop=2)
    assert inside.passed and not outside.passed


def test_nothing_compared_fails_the_floor() -> None:
    (floor,) = gates(None, None, fail_below=0.0, max_drop=None)
    assert not floor.passed
