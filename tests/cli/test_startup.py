"""What ``shadow --help`` imports (not how long it takes: bench/cli_startup.py measures
that), and the values the parser restates so as not to import their modules."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Packages a parser has no use for: what made `shadow --help` take 0.7-2 s.
HEAVY = {"aiohttp", "duckdb", "pyarrow", "pydantic", "pydantic_core", "structlog", "orjson",
         "yaml", "rich", "numpy", "jsonschema", "kafka", "apscheduler", "prometheus_client"}
# The project's own modules a parser may import: the CLI, the errors it prints, and the
# packages above them.
CLI = ("shadow.cli",)
ALLOWED = {"shadow", "shadow.core", "shadow.core.errors"}


def imported(*args: str) -> set[str]:
    """Every module ``python -X importtime ARGS`` imported, read from its report."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
            if line.startswith("import time:") and "|" in line} - {"imported package"}


def beyond_the_cli(modules: set[str]) -> set[str]:
    """The heavy packages (by their top-level name: they import their own parts lazily)
    and the project's modules outside the CLI among ``modules``."""
    project = ("shadow", "rollout", "connectors")
    return ({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY}
            | {m for m in modules if m.split(".")[0] in project and not m.startswith(CLI)
               and m not in ALLOWED})


@pytest.fixture(scope="module")
def help_imports() -> set[str]:
    return imported("-m", "shadow", "--help")


def test_help_imports_nothing_beyond_the_cli_but_what_send_imports_at_its_top(
        help_imports: set[str]) -> None:
    # shadow/cli/send.py imports the configuration and the connectors at its top, not in
    # its handler; everything else `shadow --help` imports is the CLI's own.
    send = imported("-c", "import shadow.cli.send")
    assert beyond_the_cli(help_imports) - beyond_the_cli(send) == set()
    assert "shadow.cli.main" in help_imports and "argparse" in help_imports


def test_help_imports_nothing_beyond_the_cli(help_imports: set[str]) -> None:
    assert beyond_the_cli(help_imports) == set()


def test_parsing_a_subcommand_imports_nothing_beyond_the_cli() -> None:
    code = ("import sys\n"
            "from shadow.cli.main import _parser\n"
            "_parser().parse_args(['rollout', 'simulate', '--runs', '5'])\n"
            "print('\\n'.join(sys.modules))\n")
    send = imported("-c", "import shadow.cli.send")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    assert beyond_the_cli(set(done.stdout.split())) - beyond_the_cli(send) == set()


def test_simulate_options_restate_the_scenario() -> None:
    from rollout.simulate import Scenario
    from rollout.simulate_scenarios import SCENARIOS
    from shadow.cli.simulate import METHODS, OPTIONS, SCENARIO_NAMES
    from shadow.config.rollout import Method

    defaults = {f.name: f.default for f in dataclasses.fields(Scenario)}
    assert list(OPTIONS) == list(defaults)
    assert {name: default for name, (default, _) in OPTIONS.items()} == {
        name: value.value if isinstance(value, Method) else value
        for name, value in defaults.items()}
    assert METHODS == tuple(m.value for m in Method)
    assert SCENARIO_NAMES == tuple(SCENARIOS)


def test_calibrate_restates_the_default_bar() -> None:
    from shadow.cli import calibrate
    from shadow.compare.calibrate import DEFAULT_MIN_AGREEMENT

    assert calibrate.DEFAULT_MIN_AGREEMENT == DEFAULT_MIN_AGREEMENT


def test_rollout_actions_are_the_rollouts_commands() -> None:
    from rollout.state import Action
    from shadow.cli.rollout import ACTIONS

    by_the_controller = {Action.START, Action.AWAIT_APPROVAL, Action.TIER_FALLBACK}
    commands = {a.value for a in Action if a not in by_the_controller}
    assert set(ACTIONS) == commands | {"status", "history", "simulate"}


def test_the_startup_benchmark_runs() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "cli_startup.py"), "--runs", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "shadow --help " in done.stdout and 'python -c "import argparse"' in done.stdout
