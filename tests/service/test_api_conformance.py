"""The control API conforms to its own description, checked by Schemathesis against a real daemon.

One daemon (a subprocess, as ``shadow run`` runs in production) serves the module,
with a token of every scope. For each token, the Schemathesis command line loads the
daemon's ``/openapi.json`` over HTTP and runs its phases (examples, coverage,
fuzzing) with every check it has: status codes, content types and bodies as
described, no server error, 405 for a method a route does not take, schema-valid
requests accepted and schema-violating ones refused. Zero failures is the bar: the
description is generated from the models the handlers validate with, and this is
what keeps the two the same.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shadow.config.daemon import Scope
from tests.daemon_process import ready_api, stop
from tests.service.test_api_scopes import TOKENS, environment, start, write_setup
from tests.waiting import wait_until

EXAMPLES = 10
"""Generated calls per operation and phase: every field varied, the run well under a minute."""
SEED = 20261206
"""Fixed, so that a failure in CI is the same failure on a laptop."""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("conformance")
    config = write_setup(directory)
    with (directory / "events.jsonl").open("a", encoding="utf-8") as events:
        events.write("{not an event\n")  # a dead letter, so that /dead-letters has one
    process = start(directory, config, environment())
    try:
        api = ready_api(directory / "daemon.duckdb", process=process)
        wait_until(lambda: dead_letters(api), timeout_s=60, what="the dead letter stored")
        yield directory, api
    finally:
        code, log = stop(process)
    assert code == 0, log


def dead_letters(api: str) -> list[object]:
    answer = httpx.get(f"{api}/dead-letters", trust_env=False, timeout=60,
                       headers={"Authorization": f"Bearer {TOKENS[Scope.READ][2]}"})
    assert answer.status_code == 200, answer.text
    return list(answer.json()["dead_letters"])


def schemathesis(directory: Path, api: str, token: str) -> subprocess.CompletedProcess[str]:
    """``st run`` on the daemon's own description, with ``token``, every check on."""
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{api}/openapi.json",
         "--header", f"Authorization: Bearer {token}", "--checks", "all",
         "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
         "--generation-database", "none", "--no-color", "--warnings", "off"],
        cwd=directory, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("scope", list(Scope), ids=str)
def test_every_generated_call_conforms_to_the_description(
        daemon: tuple[Path, str], scope: Scope) -> None:
    directory, api = daemon
    run = schemathesis(directory, api, TOKENS[scope][2])
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    tested = re.search(r"Tested: (\d+)", output)
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    assert tested is not None and cases is not None, output
    # Every operation but the description's own route (which Schemathesis leaves out).
    assert int(tested.group(1)) == 19, output
    generated, passed = map(int, cases.groups())
    assert generated == passed >= 19 * EXAMPLES, output
    print(f"{scope}: {generated} generated cases passed, over {tested.group(1)} operations")
