"""The ``shadow`` command, run for real in subprocesses."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

ANSI = re.compile(r"\x1b\[")

CANDIDATE = '''\
"""A tiny triage candidate for the CLI tests."""

__version__ = "1.2"


def classify(event):
    subject = event.payload.get("subject", "").lower()
    if "invoice" in subject or "refund" in subject:
        return {"category": "billing", "confidence": 0.9}
    if "password" in subject or "login" in subject:
        return {"category": "login", "confidence": 0.8}
    return {"category": "bug", "confidence": 0.2}
'''

EVENTS = [
    {"event_id": "e1", "key": "t1", "occurred_at": "2024-05-06T08:00:00Z",
     "segment": {"channel": "email", "language": "en"}, "payload": {"subject": "Invoice wrong"}},
    {"event_id": "e2", "key": "t2", "occurred_at": "2024-05-06T08:05:00Z",
     "segment": {"channel": "chat", "language": "de"},
     "payload": {"subject": "Passwort vergessen"}},
    {"event_id": "e3", "key": "t3", "occurred_at": "2024-05-06T08:10:00Z",
     "segment": {"channel": "email", "language": "en"}, "payload": {"subject": "Login fails"}},
    {"event_id": "e4", "key": "t4", "occurred_at": "2024-05-06T08:15:00",
     "segment": {"channel": "web", "language": "en"}, "payload": {"subject": "Refund please"}},
    {"event_id": "e5", "key": "t5", "occurred_at": "2024-05-06T08:20:00Z",
     "segment": {"channel": "web", "language": "de"}, "payload": {"subject": "Rechnung falsch"}},
]
OUTCOMES = [
    {"key": "t1", "outcome": {"category": "Billing"}, "decided_at": "2024-05-06T09:00:00Z",
     "actor": "maya"},
    {"key": "t2", "outcome": {"category": "login"}, "decided_at": "2024-05-06T09:00:00Z"},
    {"key": "t3", "outcome": {"category": "bug"}, "decided_at": "2024-05-06T09:00:00Z"},
    {"key": "t3", "outcome": {"category": "login"}, "decided_at": "2024-05-07T09:00:00Z"},
    {"key": "t5", "outcome": {"category": "billing"}, "decided_at": "2024-05-06T10:00:00Z"},
]
CONFIG = """\
version: 1
candidate:
  callable: triage:classify
  name: triage
comparator:
  kind: normalized
  prediction_path: category
  outcome_path: category
store:
  path: shadow.duckdb
"""


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items()
        if not k.startswith("SHADOW_") and k != "FORCE_COLOR"
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "shadow", *args], cwd=cwd, env=environment,
        capture_output=True, text=True, timeout=120, check=False,
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + extra, encoding="utf-8")
    return path


def prepare(directory: Path) -> Path:
    """Events (one malformed line, one duplicate of e1), outcomes, a candidate, a config."""
    (directory / "triage.py").write_text(CANDIDATE, encoding="utf-8")
    write_jsonl(directory / "events.jsonl", [*EVENTS, EVENTS[0]], extra="{not json\n")
    write_jsonl(directory / "outcomes.jsonl", OUTCOMES)
    (directory / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    return directory


def run_all(
    directory: Path, cases: dict[str, tuple[tuple[str, ...], dict[str, str]]]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run independent commands concurrently: each costs a Python start-up."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, directory, *args, **env)
                   for name, (args, env) in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("shadow: error: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def assert_argparse_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    """A usage error argparse found: the same one line as every other usage error, and where
    to look (the subcommand's --help)."""
    assert_usage_error(result, fragment)
    assert re.fullmatch(r"shadow: error: ([\w-]+ )*.* \(see .*shadow( [\w-]+)* --help\)\n",
                        result.stderr), result.stderr


# -- replay, then report -----------------------------------------------------

REPLAY = ("replay", "events.jsonl", "--outcomes", "outcomes.jsonl", "--config", "shadow.yaml")
REPORTS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "table": (("report", "--db", "shadow.duckdb"), {}),
    "json": (("report", "--db", "shadow.duckdb", "--format", "json"), {}),
    "markdown": (("report", "--format", "markdown"), {"SHADOW_DB": "shadow.duckdb"}),
    "out-json": (("report", "--db", "shadow.duckdb", "--format", "json",
                  "--out", "report-json.txt"), {}),
    "out-markdown": (("report", "--db", "shadow.duckdb", "--format", "markdown",
                      "--out", "report-markdown.txt"), {}),
    "out-table": (("report", "--db", "shadow.duckdb", "--out", "report-table.txt"), {}),
    "out-html": (("report", "--db", "shadow.duckdb", "--format", "html",
                  "--out", "report-html.txt"), {}),
    "out-unwritable": (("report", "--db", "shadow.duckdb", "--out", "no/such/dir/r.txt"), {}),
}


@dataclass(frozen=True)
class Replayed:
    directory: Path
    first: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    reports: dict[str, subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    directory = prepare(tmp_path_factory.mktemp("replayed"))
    first = run(directory, *REPLAY)
    again = run(directory, *REPLAY, "--quiet")
    return Replayed(directory, first, again, run_all(directory, REPORTS))


def test_replay_succeeds_and_prints_the_summary(replayed: Replayed) -> None:
    result = replayed.first

    assert result.returncode == 0, result.stderr
    assert "events read              7 = stored 5 + duplicates 1 + dead letters 1" in result.stdout
    assert "outcomes read            5 = stored 5" in result.stdout
    assert "compared                 4   50.0 % agree" in result.stdout
    assert "Traceback" not in result.stderr


def test_replay_progress_is_plain_lines_on_stderr_when_not_a_terminal(replayed: Replayed) -> None:
    result, directory = replayed.first, replayed.directory

    assert not ANSI.search(result.stderr) and not ANSI.search(result.stdout)
    assert result.stderr.splitlines() == [
        f"{directory / 'events.jsonl'}: 7 records read (100 %)",
        f"{directory / 'outcomes.jsonl'}: 5 records read (100 %)",
    ]


def test_replay_again_adds_nothing_and_quiet_prints_no_progress(replayed: Replayed) -> None:
    result = replayed.again

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "stored 0 + duplicates 6 + dead letters 1" in result.stdout
    assert "outcomes read            5 = stored 0 + duplicates 5" in result.stdout
    assert "nothing new to compare" in result.stdout


def test_report_table(replayed: Replayed) -> None:
    result = replayed.reports["table"]

    assert result.returncode == 0, result.stderr
    assert "triage (version 1.2)" in result.stdout
    assert "50.0 % [" in result.stdout
    assert "language" in result.stdout
    assert not ANSI.search(result.stdout)


def test_report_markdown_with_db_from_environment(replayed: Replayed) -> None:
    result = replayed.reports["markdown"]

    assert result.returncode == 0, result.stderr
    # The owners' summary: the verdict first, and why (4 compared, fewer than 200).
    assert result.stdout.startswith("# Readiness report\n")
    assert "## triage (version 1.2): NOT ENOUGH DATA" in result.stdout
    assert "**sample size**: 4 compared" in result.stdout


def test_report_json_follows_the_contract(replayed: Replayed) -> None:
    result = replayed.reports["json"]

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["events_read"], report["duplicates"], report["dead_letters"]) == (7, 1, 1)
    (candidate,) = report["candidates"]
    assert candidate["name"] == "triage" and candidate["version"] == "1.2"
    (owned,) = report["owner"]["candidates"]
    assert owned["verdict"]["status"] == "not_enough_data"
    assert (candidate["events"], candidate["predictions"], candidate["errors"]) == (5, 5, 0)
    assert (candidate["compared"], candidate["pending"]) == (4, 1)
    agreement = candidate["agreement"]
    assert set(agreement) >= {"rate", "low", "high", "method"}
    assert agreement["method"] == "wilson"
    assert agreement["rate"] == pytest.approx(0.5)
    assert 0 <= agreement["low"] <= agreement["rate"] <= agreement["high"] <= 1
    latency = candidate["latency_ms"]
    assert set(latency) >= {"p50", "p95", "p99"}
    assert all(isinstance(latency[p], float) and latency[p] >= 0 for p in ("p50", "p95", "p99"))
    assert latency["p50"] <= latency["p95"] <= latency["p99"]
    segments = {(s["field"], s["value"]): s for s in candidate["segments"]}
    assert set(segments) == {
        ("channel", "chat"), ("channel", "email"), ("channel", "web"),
        ("language", "de"), ("language", "en"),
    }
    for segment in segments.values():
        assert set(segment) >= {"field", "value", "compared", "agreement"}
        assert set(segment["agreement"]) >= {"rate", "low", "high", "method"}
    assert segments[("language", "de")]["compared"] == 2
    assert segments[("language", "de")]["agreement"]["rate"] == 0.0
    assert segments[("language", "en")]["agreement"]["rate"] == 1.0


@pytest.mark.parametrize(
    ("fmt", "marker"),
    [("json", '"candidates"'), ("markdown", "# Readiness report"),
     ("table", "triage (version 1.2)"), ("html", "NOT ENOUGH DATA")],
)
def test_report_out_file(replayed: Replayed, fmt: str, marker: str) -> None:
    result = replayed.reports[f"out-{fmt}"]

    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == f"wrote report-{fmt}.txt"
    text = (replayed.directory / f"report-{fmt}.txt").read_text(encoding="utf-8")
    assert marker in text
    assert not ANSI.search(text)


def test_report_out_json_equals_stdout_json(replayed: Replayed) -> None:
    written = json.loads((replayed.directory / "report-json.txt").read_text(encoding="utf-8"))
    printed = json.loads(replayed.reports["json"].stdout)

    for report in (written, printed):
        del report["generated_at"]
        del report["owner"]["generated_at"]
    assert written == printed


def test_report_out_to_unwritable_place_is_a_failure(replayed: Replayed) -> None:
    result = replayed.reports["out-unwritable"]

    assert result.returncode == 1
    assert result.stderr.startswith("shadow: failed: cannot write no/such/dir/r.txt")
    assert "Traceback" not in result.stderr


# -- usage and configuration errors: exit 2, one line, no traceback ----------
# Each case is a separate process that fails early; they run concurrently once
# per module (a Python start with these imports costs about half a second).

ERROR_CASES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "config": (("replay", "events.jsonl", "--config", "bad.yaml"), {}),
    "not_yaml": (("replay", "events.jsonl", "--config", "not-yaml.yaml"), {}),
    "config_missing": (("replay", "events.jsonl", "--config", "nope.yaml"), {}),
    "missing_events": (("replay", "missing.jsonl", "--config", "shadow.yaml"), {}),
    "unknown_format": (("replay", "events.xlsx", "--config", "shadow.yaml"), {}),
    "candidate_no_colon": (
        ("replay", "events.jsonl", "--candidate", "triage.classify", "--db", "s.duckdb"), {}),
    "candidate_unimportable": (
        ("replay", "events.jsonl", "--candidate", "no_such_module:classify", "--db", "s.duckdb"),
        {}),
    "candidate_fails_on_import": (
        ("replay", "events.jsonl", "--candidate", "broken:classify", "--db", "s.duckdb"), {}),
    "candidate_missing": (("replay", "events.jsonl", "--db", "s.duckdb"), {}),
    "replay_without_db": (("replay", "events.jsonl", "--candidate", "triage:classify"), {}),
    "report_without_db": (("report",), {}),
    "compare_unknown": (
        ("replay", "events.jsonl", "--config", "shadow.yaml", "--compare", "fuzzy"), {}),
    "batch_size_0": (
        ("replay", "events.jsonl", "--config", "shadow.yaml", "--batch-size", "0",
         "--db", "batch-0.duckdb"), {}),
    "usage_no_command": ((), {}),
    "usage_unknown_command": (("deploy",), {}),
    "usage_bad_format": (("report", "--db", "s.duckdb", "--format", "xml"), {}),
    "report_not_duckdb": (("report", "--db", "notes.duckdb"), {}),
    "replay_into_not_duckdb": (
        ("replay", "events.jsonl", "--config", "shadow.yaml", "--db", "notes.duckdb"), {}),
    "demo_too_few_events": (("demo", "--dir", "d", "--events", "10"), {}),
}


@pytest.fixture(scope="module")
def failures(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    directory = prepare(tmp_path_factory.mktemp("failures"))
    (directory / "bad.yaml").write_text("comparator: {kind: fuzzy}\n", encoding="utf-8")
    (directory / "not-yaml.yaml").write_text("comparator: {kind: exact\n", encoding="utf-8")
    (directory / "events.xlsx").write_bytes(b"PK\x03\x04")
    (directory / "broken.py").write_text("raise RuntimeError('no model weights')\n",
                                         encoding="utf-8")
    (directory / "notes.duckdb").write_text("not a database\n", encoding="utf-8")
    return directory, run_all(directory, ERROR_CASES)


Failures = tuple[Path, dict[str, subprocess.CompletedProcess[str]]]


def test_config_error(failures: Failures) -> None:
    result = failures[1]["config"]

    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    header, *details = result.stderr.splitlines()
    assert header == "shadow: error: invalid configuration in bad.yaml:"
    # the validation problems follow, one indented line per key path
    assert details == [
        "  comparator.kind: expected one of exact, normalized, set, numeric, fields, custom, "
        "similarity, semantic, judge, actions, got 'fuzzy'"
    ]


def test_config_file_that_is_not_yaml(failures: Failures) -> None:
    assert_usage_error(failures[1]["not_yaml"], "not-yaml.yaml is not valid YAML")


def test_config_file_missing(failures: Failures) -> None:
    assert_usage_error(failures[1]["config_missing"], "cannot read config file nope.yaml")


def test_missing_events_file(failures: Failures) -> None:
    assert_usage_error(failures[1]["missing_events"], "no such file: missing.jsonl")


def test_events_file_of_unknown_format(failures: Failures) -> None:
    assert_usage_error(failures[1]["unknown_format"], "cannot tell the file format")


def test_bad_candidate_form(failures: Failures) -> None:
    assert_usage_error(
        failures[1]["candidate_no_colon"],
        "--candidate: expected the form module:function, got 'triage.classify'",
    )


def test_unimportable_candidate_module(failures: Failures) -> None:
    assert_usage_error(
        failures[1]["candidate_unimportable"], "cannot import module 'no_such_module'"
    )


def test_candidate_module_that_fails_on_import(failures: Failures) -> None:
    assert_usage_error(
        failures[1]["candidate_fails_on_import"], "cannot import module 'broken'",
        "no model weights",
    )


def test_missing_candidate(failures: Failures) -> None:
    assert_usage_error(failures[1]["candidate_missing"], "--candidate is required")


def test_replay_without_db(failures: Failures) -> None:
    directory, results = failures

    assert_usage_error(results["replay_without_db"], "--db is required")
    assert not list(directory.glob("*.duckdb.wal"))


def test_report_without_db(failures: Failures) -> None:
    assert_usage_error(failures[1]["report_without_db"], "--db is required")


def test_unknown_compare_name(failures: Failures) -> None:
    assert_usage_error(failures[1]["compare_unknown"], "--compare fuzzy: no such comparator")


def test_batch_size_zero_is_refused(failures: Failures) -> None:
    directory, results = failures

    assert_usage_error(results["batch_size_0"], "--batch-size: expected a positive integer, got 0")
    assert not (directory / "batch-0.duckdb").exists()


def test_usage_error_no_command(failures: Failures) -> None:
    assert_argparse_error(failures[1]["usage_no_command"], "required")


def test_usage_error_unknown_command(failures: Failures) -> None:
    assert_argparse_error(failures[1]["usage_unknown_command"], "invalid choice: 'deploy'")


def test_usage_error_bad_report_format(failures: Failures) -> None:
    assert_argparse_error(failures[1]["usage_bad_format"], "invalid choice: 'xml'")


def test_demo_refuses_too_few_events(failures: Failures) -> None:
    directory, results = failures

    assert_usage_error(results["demo_too_few_events"], "--events: expected at least 100 tickets")
    assert not (directory / "d").exists()


# -- runtime failures: exit 1 ---------------------------------------------------


def test_report_on_a_file_that_is_not_duckdb(failures: Failures) -> None:
    result = failures[1]["report_not_duckdb"]

    assert result.returncode == 1
    assert result.stderr.startswith("shadow: failed: cannot open store notes.duckdb")
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_replay_into_a_file_that_is_not_duckdb(failures: Failures) -> None:
    directory, results = failures
    result = results["replay_into_not_duckdb"]

    assert result.returncode == 1
    assert result.stderr.startswith("shadow: failed: cannot open store notes.duckdb")
    assert "Traceback" not in result.stderr
    assert (directory / "notes.duckdb").read_text(encoding="utf-8") == "not a database\n"


# -- help and demo -------------------------------------------------------------


def test_module_help(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")

    assert result.returncode == 0
    assert result.stdout.startswith("usage: shadow")
    for command in ("replay", "report", "demo"):
        assert command in result.stdout


def test_replay_help_names_the_environment_variables(tmp_path: Path) -> None:
    result = run(tmp_path, "replay", "--help")

    assert result.returncode == 0
    assert "SHADOW_DB" in result.stdout and "SHADOW_CONFIG" in result.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cwd = tmp_path_factory.mktemp("demo-cwd")
    directory = cwd / "demo"
    return directory, run(cwd, "demo", "--dir", str(directory))


def test_demo_runs_end_to_end(demo: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    directory, result = demo

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for name in ("events.jsonl", "outcomes.jsonl", "shadow.yaml", "shadow.duckdb",
                 "report.json", "report.md", "report.html"):
        assert (directory / name).is_file(), name
    assert "What to look at:" in result.stdout
    assert "language=de" in result.stdout


def test_demo_output_is_plain_when_not_a_terminal(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, result = demo

    assert not ANSI.search(result.stdout) and not ANSI.search(result.stderr)
    assert f"{directory / 'events.jsonl'}: " in result.stderr
    progress = [line for line in result.stderr.splitlines() if line]
    assert all(re.fullmatch(r".+: [\d,]+ records read( \(\d+ %\))?", line) for line in progress)


def test_demo_report_accounts_for_every_record(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = demo

    report = json.loads((directory / "report.json").read_text(encoding="utf-8"))

    lines = (directory / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert report["events_read"] == len([line for line in lines if line.strip()])
    assert report["events_read"] == (
        report["events_stored"] + report["duplicates"] + report["dead_letters"]
    )
    assert report["duplicates"] > 0 and report["dead_letters"] > 0
    (candidate,) = report["candidates"]
    assert candidate["predictions"] == report["events_stored"]
    assert candidate["compared"] + candidate["pending"] + candidate["errors"] == (
        candidate["predictions"]
    )


def test_demo_report_shows_the_german_segment_behind(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = demo

    report = json.loads((directory / "report.json").read_text(encoding="utf-8"))

    (candidate,) = report["candidates"]
    overall = candidate["agreement"]
    segments = {(s["field"], s["value"]): s for s in candidate["segments"]}
    german = segments[("language", "de")]
    assert german["compared"] >= 100
    assert german["agreement"]["rate"] < overall["rate"] - 0.15
    # not only lower, but clearly so: the intervals do not overlap
    assert german["agreement"]["high"] < overall["low"]


def test_demo_config_replays_again_without_changes(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = demo

    result = run(directory, "replay", "events.jsonl", "--outcomes", "outcomes.jsonl",
                 "--config", "shadow.yaml", "--quiet")

    assert result.returncode == 0, result.stderr
    assert "stored 0 + " in result.stdout
    assert "nothing new to compare" in result.stdout


def test_demo_report_has_a_human_baseline_from_reviews_and_recategorisations(
    demo: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    directory, _ = demo
    history: dict[str, list[tuple[datetime, str, Any]]] = {}
    for line in (directory / "outcomes.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            decided = datetime.fromisoformat(row["decided_at"])
        except ValueError:
            continue  # the demo's malformed lines
        history.setdefault(row["key"], []).append((decided, row["actor"], row["outcome"]))
    pairs = agreed = 0
    for decisions in history.values():
        decisions.sort()
        for (_, before, label), (_, after, again) in itertools.pairwise(decisions):
            if before != after:
                pairs += 1
                agreed += label == again

    report = json.loads((directory / "report.json").read_text(encoding="utf-8"))

    baseline = report["owner"]["human_baseline"]
    assert (baseline["pairs"], baseline["agreed"]) == (pairs, agreed)
    assert 0.6 < agreed / pairs < 0.95
