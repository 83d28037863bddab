"""The command's habits, run for real in subprocesses: one error style, ``--version``,
global options after the subcommand, the renamed ``--write-batch``, hints that run as
printed, and ``shadow rollout`` beside a running daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.cli.test_cli import (
    assert_argparse_error,
    assert_usage_error,
    prepare,
    run,
    run_all,
)
from tests.daemon_process import TOKEN, get, ready_api, start_daemon, stop

SCRIPT = Path(sys.executable).parent / "shadow"  # where `pip install -e .` puts it


@pytest.fixture
def installed_script() -> Path:
    """The script the README's install puts beside the interpreter; its absence fails the
    test instead of skipping it."""
    assert SCRIPT.exists(), f"no {SCRIPT}: install with pip install -e . as the README does"
    return SCRIPT

REPLAY = ("replay", "events.jsonl", "--outcomes", "outcomes.jsonl", "--config", "shadow.yaml",
          "--quiet")


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, prefix: str,
                    *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(prefix), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# -- what used to be a traceback or a raw error ---------------------------------------------


@pytest.fixture(scope="module")
def errors(tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]]]:
    directory = prepare(tmp_path_factory.mktemp("habits"))
    (directory / "a-file").write_text("not a directory\n", encoding="utf-8")
    (directory / "a-directory").mkdir()
    return directory, run_all(directory, {
        "demo_dir_is_a_file": (("demo", "--dir", "a-file"), {}),
        "demo_dir_cannot_be_made": (("demo", "--dir", "/proc/nope"), {}),
        "dead_letters_negative_limit": (("dead-letters", "--db", "x.duckdb", "--limit", "-1"),
                                        {}),
        "history_negative_limit": (("rollout", "history", "--limit", "-1"), {}),
        "history_limit_not_a_number": (("rollout", "history", "--limit", "ten"), {}),
        "missing_store": (("report", "--db", "missing.duckdb"), {}),
        "store_is_a_directory": (("dead-letters", "--db", "a-directory"), {}),
        "events_are_a_directory": (("replay", "a-directory", "--config", "shadow.yaml"), {}),
        "outcomes_are_a_directory": (("replay", "events.jsonl", "--outcomes", "a-directory",
                                      "--config", "shadow.yaml"), {}),
        "eval_golden_is_a_directory": (("eval", "a-directory", "--config", "shadow.yaml"), {}),
        "calibrate_verdicts_are_a_directory": (("calibrate", "a-directory"), {}),
        "status_without_config_or_db": (("rollout", "status"), {}),
        "status_without_config_no_daemon": (("rollout", "status", "--db", "x.duckdb"), {}),
        "version": (("--version",), {}),
        "log_level_after": (("dead-letters", "--db", "x.duckdb", "--log-level", "loud"), {}),
    })


Errors = tuple[Path, dict[str, subprocess.CompletedProcess[str]]]


def test_demo_dir_that_is_a_file(errors: Errors) -> None:
    assert_usage_error(errors[1]["demo_dir_is_a_file"], "a-file is a file, expected a directory")


def test_demo_dir_that_cannot_be_made(errors: Errors) -> None:
    assert_usage_error(errors[1]["demo_dir_cannot_be_made"],
                       "cannot make the directory /proc/nope")


def test_a_negative_limit_is_a_usage_error(errors: Errors) -> None:
    for case in ("dead_letters_negative_limit", "history_negative_limit"):
        assert_argparse_error(errors[1][case], "argument --limit: expected a positive integer, "
                                               "got -1")
    assert_argparse_error(errors[1]["history_limit_not_a_number"],
                          "argument --limit: expected a positive integer, got 'ten'")


def test_a_usage_error_points_at_the_subcommands_help(errors: Errors) -> None:
    stderr = errors[1]["history_negative_limit"].stderr
    assert stderr.startswith("shadow: error: rollout history: argument --limit")
    assert stderr.rstrip().endswith("-m shadow rollout history --help)")


def test_a_missing_store_is_an_error_to_fix(errors: Errors) -> None:
    assert_usage_error(errors[1]["missing_store"], "no store at missing.duckdb")


def test_a_directory_where_a_file_is_expected_says_so(errors: Errors) -> None:
    assert_usage_error(errors[1]["store_is_a_directory"],
                       "a-directory is a directory, expected a store file")
    for case in ("events_are_a_directory", "outcomes_are_a_directory",
                 "eval_golden_is_a_directory", "calibrate_verdicts_are_a_directory"):
        assert_usage_error(errors[1][case], "a-directory is a directory, expected a file")


def test_rollout_status_needs_a_configuration_or_a_daemon(errors: Errors) -> None:
    assert_usage_error(errors[1]["status_without_config_or_db"], "--config FILE is required")
    assert_usage_error(errors[1]["status_without_config_no_daemon"],
                       "no daemon runs x.duckdb: give --config FILE")


def test_version_is_the_installed_distributions(errors: Errors) -> None:
    result = errors[1]["version"]
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"shadow {version('shadow-rollout')}\n"


def test_a_global_option_after_the_subcommand_is_parsed(errors: Errors) -> None:
    assert_argparse_error(errors[1]["log_level_after"],
                          "argument --log-level: invalid choice: 'loud'")


# -- options, the alias and hints, on a replay ------------------------------------------------


def replay_logs(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_log_options_work_before_and_after_the_subcommand(tmp_path: Path) -> None:
    prepare(tmp_path)
    options = ("--log-level", "info", "--log-format", "json")
    before = run(tmp_path, *options, *REPLAY, "--db", "before.duckdb")
    after = run(tmp_path, *REPLAY, "--db", "after.duckdb", *options)
    neither = run(tmp_path, *REPLAY, "--db", "neither.duckdb")
    for result in (before, after):
        assert result.returncode == 0, result.stderr
        assert [r["event"] for r in replay_logs(result.stderr)] == ["replay finished"]
    assert neither.returncode == 0 and neither.stderr == ""


def test_batch_size_still_works_and_says_once_it_is_deprecated(tmp_path: Path) -> None:
    prepare(tmp_path)
    old = run(tmp_path, *REPLAY, "--db", "old.duckdb", "--batch-size", "2", "--batch-size", "3")
    new = run(tmp_path, *REPLAY, "--db", "new.duckdb", "--write-batch", "2")
    assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
    assert old.stderr.splitlines() == [
        "shadow: warning: --batch-size is deprecated, use --write-batch (records per write "
        "transaction, not the candidate's batch_size)"]
    assert new.stderr == ""
    assert old.stdout.splitlines()[:2] == new.stdout.splitlines()[:2]
    assert "events read              7 = stored 5" in old.stdout


def next_hint(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith("next: ")]
    assert len(lines) == 1, stdout
    return lines[0].removeprefix("next: ")


def run_as_printed(command: str, cwd: Path, env: dict[str, str] | None = None
                   ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def test_the_hint_of_python_m_shadow_runs_as_printed(tmp_path: Path) -> None:
    prepare(tmp_path)
    result = run(tmp_path, *REPLAY, "--db", "s.duckdb")
    assert result.returncode == 0, result.stderr
    hint = next_hint(result.stdout)
    python = "python" if shutil.which("python") == sys.executable else sys.executable
    assert hint.startswith(f"{python} -m shadow report --db s.duckdb")
    report = run_as_printed(hint, tmp_path)
    assert report.returncode == 0, report.stderr
    assert "triage" in report.stdout


@pytest.mark.usefixtures("installed_script")
def test_the_hint_of_the_script_by_its_path_runs_as_printed(tmp_path: Path) -> None:
    prepare(tmp_path)
    script = os.path.relpath(SCRIPT, tmp_path)  # as `.venv/bin/shadow` after the README
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p, "shadow").resolve() != SCRIPT.resolve())
    result = subprocess.run([script, *REPLAY, "--db", "s.duckdb"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    hint = next_hint(result.stdout)
    assert hint.startswith(f"{script} report --db s.duckdb")
    report = run_as_printed(hint, tmp_path, env)
    assert report.returncode == 0, report.stderr
    assert "triage" in report.stdout


@pytest.mark.usefixtures("installed_script")
def test_the_hint_of_the_script_on_path_is_its_name(tmp_path: Path) -> None:
    prepare(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["PATH"] = os.pathsep.join([str(SCRIPT.parent), env.get("PATH", "")])
    result = subprocess.run(["shadow", *REPLAY, "--db", "s.duckdb"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    hint = next_hint(result.stdout)
    assert hint.startswith("shadow report --db s.duckdb")
    assert run_as_printed(hint, tmp_path, env).returncode == 0


# -- the top-level help ----------------------------------------------------------------------


def test_the_top_level_help_lists_every_command_and_rollout_action(tmp_path: Path) -> None:
    from rollout.state import Action

    result = run(tmp_path, "--help")
    assert result.returncode == 0
    commands = ["replay", "report", "dead-letters", "backup", "token", "demo", "run", "eval",
                "calibrate", "send", "show", "rollout"]
    listed = result.stdout.split("positional arguments:")[1].split("options:")[0]
    for command in commands:
        assert f"\n    {command} " in listed, command
    actions = [a.value for a in Action
               if a not in (Action.START, Action.AWAIT_APPROVAL, Action.TIER_FALLBACK)]
    epilog = result.stdout.split("rollout actions")[1]
    for action in [*actions, "status", "history", "simulate"]:
        assert f"\n  {action} " in epilog, action


# -- beside a running daemon -----------------------------------------------------------------

DAEMON_CONFIG = """
candidate: {callable: triage:triage, name: triage, version: "1"}
store: {path: daemon.duckdb}
sources:
  events: [{kind: file, path: events.jsonl}]
daemon:
  api: {port: 0}
rollout:
  steps:
    - {percent: 0, min_compared: 100}
    - {percent: 10}
    - {percent: 50}
    - {percent: 100}
  sink: {kind: file, path: decisions.jsonl}
"""
DAEMON_STEPS = 4  # the plan above: 0 (shadow), 10, 50, 100 %


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Path, subprocess.Popen[str], str]]:
    directory = tmp_path_factory.mktemp("daemon")
    (directory / "triage.py").write_text("def triage(event):\n    return 'billing'\n",
                                         encoding="utf-8")
    (directory / "events.jsonl").write_text(json.dumps(
        {"event_id": "e1", "key": "k1", "occurred_at": "2026-01-01T00:00:00Z"}) + "\n",
        encoding="utf-8")
    (directory / "daemon.yaml").write_text(DAEMON_CONFIG, encoding="utf-8")
    process = start_daemon(directory / "daemon.yaml", "daemon.log")
    try:
        api = ready_api(directory / "daemon.duckdb", process=process)
        yield directory, process, api
    finally:
        stop(process)


Daemon = tuple[Path, subprocess.Popen[str], str]


def test_a_replay_into_a_daemons_store_says_which_daemon(daemon: Daemon) -> None:
    directory, process, api = daemon
    result = run(directory, "replay", "events.jsonl", "--config", "daemon.yaml")
    assert_usage_error(result, f"a running daemon (pid {process.pid}, {api}) owns the store "
                               "daemon.duckdb")


def test_rollout_status_needs_no_config_when_a_daemon_runs_the_store(daemon: Daemon) -> None:
    directory, _, _ = daemon
    as_json = run(directory, "rollout", "status", "--db", "daemon.duckdb", "--format", "json",
                  SHADOW_API_TOKEN=TOKEN)
    assert as_json.returncode == 0, as_json.stderr
    view = json.loads(as_json.stdout)
    assert (view["step"], view["steps"]) == (0, DAEMON_STEPS)
    text = run(directory, "rollout", "status", "--db", "daemon.duckdb", SHADOW_API_TOKEN=TOKEN)
    assert text.returncode == 0, text.stderr
    assert f"  step 0 of {DAEMON_STEPS} (0-{DAEMON_STEPS - 1}) · 0 % · " in text.stdout
    history = run(directory, "rollout", "history", "--db", "daemon.duckdb",
                  SHADOW_API_TOKEN=TOKEN)
    assert history.returncode == 0 and "start" in history.stdout


def test_rollout_status_without_the_token_says_which_daemon(daemon: Daemon) -> None:
    directory, process, _ = daemon
    result = run(directory, "rollout", "status", "--db", "daemon.duckdb")
    assert_usage_error(result, f"a running daemon (pid {process.pid}", "SHADOW_API_TOKEN")


def test_a_refused_promotion_names_force_as_each_interface_spells_it(daemon: Daemon) -> None:
    directory, _, api = daemon
    cli = run(directory, "rollout", "promote", "--db", "daemon.duckdb", "--reason", "eager",
              SHADOW_API_TOKEN=TOKEN, SHADOW_ACTOR="dana")
    assert_one_line(cli, 1, "shadow: refused: ", "has not earned promotion",
                    "(give --force to promote anyway")
    assert '"force"' not in cli.stderr
    status, body = get(api + "/rollout/promote", token=TOKEN, method="POST",
                       body={"actor": "dana", "reason": "eager"})
    assert status == 409
    message = json.loads(body)["error"]
    assert '(give "force": true to promote anyway' in message and "--force" not in message


@pytest.mark.usefixtures("installed_script")
def test_the_demos_hints_run_as_printed_by_the_script_off_path(tmp_path: Path) -> None:
    script = os.path.relpath(SCRIPT, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p, "shadow").resolve() != SCRIPT.resolve())
    demo = subprocess.run([script, "demo", "--dir", "demo dir", "--events", "300"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert demo.returncode == 0, demo.stderr
    dead_letters = next(line for line in demo.stdout.splitlines() if " dead-letters --db " in line)
    command = dead_letters[dead_letters.index(script):]
    assert command == f"{script} dead-letters --db 'demo dir/shadow.duckdb'"
    assert run_as_printed(command, tmp_path, env).returncode == 0
    rerun = next(line for line in demo.stdout.splitlines() if "Re-run it: " in line)
    command = rerun.split("Re-run it: ", 1)[1].split("  (", 1)[0]
    # The hint changes directory first: the script is named by its absolute path there.
    assert command.startswith(f"cd 'demo dir' && {SCRIPT.absolute()} replay ")
    again = run_as_printed(command, tmp_path, env)
    assert again.returncode == 0, again.stderr


def test_a_replay_ends_with_the_verdict_the_report_gives(tmp_path: Path) -> None:
    prepare(tmp_path)
    replay = run(tmp_path, *REPLAY, "--db", "s.duckdb")
    assert replay.returncode == 0, replay.stderr
    report = run(tmp_path, "report", "--db", "s.duckdb", "--config", "shadow.yaml",
                 "--format", "json")
    assert report.returncode == 0, report.stderr
    verdict = json.loads(report.stdout)["owner"]["candidates"][0]["verdict"]
    assert verdict["line"].split(":")[0] in ("READY", "NOT READY", "NOT ENOUGH DATA")
    assert replay.stdout.rstrip().splitlines()[-2:] == [verdict["line"], verdict["next_step"]]
