"""Scoped tokens, confined backups and a trail that knows who, through a real daemon.

One daemon (a subprocess reading an export file, with a rollout whose sink is a
file) runs for the module with three tokens: ``prometheus`` (read) and
``oncall`` (operate) from environment variables, ``ops`` (admin) from a file of
hashed tokens. Every route is called with every scope, and Schemathesis, run
with each token on the daemon's own description, looks for a route that does
more than its scope allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shadow.config.daemon import Scope
from shadow.store.database import Store
from tests.daemon_process import finished, ready_api, start_daemon, stop
from tests.waiting import wait_until

TOKENS = {Scope.READ: ("prometheus", "SCOPES_READ_TOKEN", "read-3f9c1d2e8a7b6c5d4e3f2a1b"),
          Scope.OPERATE: ("oncall", "SCOPES_OPERATE_TOKEN", "operate-9a8b7c6d5e4f3a2b1c0d"),
          Scope.ADMIN: ("ops", None, "admin-0f1e2d3c4b5a69788796a5b4")}
"""Name, environment variable (none: from the tokens file) and value of each scope's token."""
SCOPES = {("GET", "/rollout"): Scope.READ, ("GET", "/rollout/history"): Scope.READ,
          ("GET", "/report"): Scope.READ, ("POST", "/reports"): Scope.READ,
          ("GET", "/dead-letters"): Scope.READ, ("GET", "/metrics"): Scope.READ,
          ("GET", "/events/{event_id}"): Scope.READ, ("GET", "/reviews"): Scope.READ,
          ("POST", "/reviews/{review_id}/verdict"): Scope.OPERATE,
          **{("POST", f"/rollout/{action}"): Scope.OPERATE
             for action in ("promote", "pause", "resume", "rollback", "restart", "abort")},
          ("POST", "/backup"): Scope.ADMIN}
"""The scope each route needs, as the issue sets it out (not read from the code)."""
EVENTS = 30
ACTIONS: list[tuple[str, dict[str, Any]]] = [
    ("promote", {"force": True, "reason": "owner approved"}), ("pause", {}), ("resume", {}),
    ("rollback", {"reason": "drill"}), ("restart", {}), ("abort", {"reason": "drill"})]
"""Every command, in an order in which each one is allowed from the one before."""


def config_text(api: str) -> str:
    return f"""
candidate: {{callable: "shadow.demo.candidate:classify", name: keyword-triage, version: "1"}}
comparator: {{kind: normalized, prediction_path: category}}
store: {{path: daemon.duckdb}}
sources:
  events: [{{kind: file, path: events.jsonl}}]
rollout:
  name: triage
  steps: [{{percent: 0, min_compared: 100000}}, {{percent: 25}}, {{percent: 100}}]
  sink: {{kind: file, path: decisions.jsonl}}
daemon:
  api:
{api}
  jobs: {{backup_dir: copies}}
"""


SCOPED_API = """    port: 0
    tokens:
      - {name: prometheus, env: SCOPES_READ_TOKEN, scope: read}
      - {name: oncall, env: SCOPES_OPERATE_TOKEN, scopes: [read, operate]}
    tokens_file: api-tokens"""


def write_setup(directory: Path, api: str = SCOPED_API) -> Path:
    (directory / "events.jsonl").write_text("".join(
        json.dumps({"event_id": f"e{i}", "key": f"t{i}", "occurred_at": "2026-01-01T00:00:00Z",
                    "payload": {"subject": "refund please", "body": f"invoice {i}"}}) + "\n"
        for i in range(EVENTS)), encoding="utf-8")
    name, _, value = TOKENS[Scope.ADMIN]
    tokens_file = directory / "api-tokens"
    tokens_file.write_text(f"# name scope sha256\n{name} admin "
                           f"{hashlib.sha256(value.encode()).hexdigest()}\n", encoding="utf-8")
    tokens_file.chmod(0o600)
    config = directory / "daemon.yaml"
    config.write_text(config_text(api), encoding="utf-8")
    return config


def environment() -> dict[str, str]:
    return {env: value for _, env, value in TOKENS.values() if env is not None}


class Running:
    """The module's daemon: its directory, its API and an HTTP client for it."""

    def __init__(self, directory: Path, api: str, process: subprocess.Popen[str]) -> None:
        self.directory, self.api, self.process = directory, api, process
        self.http = httpx.Client(base_url=api, trust_env=False, timeout=60)
        self.db = directory / "daemon.duckdb"
        self.backups = directory / "copies"

    def call(self, method: str, path: str, scope: Scope | None,
             body: dict[str, Any] | None = None) -> httpx.Response:
        headers = {} if scope is None else bearer(TOKENS[scope][2])
        return self.http.request(method, path, json=body, headers=headers)

    def history(self) -> list[dict[str, Any]]:
        response = self.call("GET", "/rollout/history", Scope.READ)
        assert response.status_code == 200, response.text
        return list(response.json())

    def folder(self) -> list[str]:
        return sorted(p.name for p in self.backups.iterdir()) if self.backups.exists() else []

    def reset(self) -> None:
        """Back to shadow at step 0, whatever the test before left."""
        status = self.call("GET", "/rollout", Scope.READ).json()
        if (status["status"], status["step"]) == ("progressing", 0):
            return
        if status["status"] not in ("aborted", "rolled_back"):
            assert command(self, "abort", Scope.ADMIN, reason="reset").status_code == 200
        assert command(self, "restart", Scope.ADMIN).status_code == 200

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in finished(self.process).splitlines()
                if line.startswith("{")]

    def cli(self, *args: str, scope: Scope, actor: str = "dana"
            ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        env.update(SHADOW_API_TOKEN=TOKENS[scope][2], SHADOW_ACTOR=actor)
        return subprocess.run([sys.executable, "-m", "shadow", *args, "--config",
                               str(self.directory / "daemon.yaml")], cwd=self.directory,
                              env=env, capture_output=True, text=True, timeout=60, check=False)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def command(daemon: Running, action: str, scope: Scope | None, *, actor: str = "dana",
            **fields: Any) -> httpx.Response:
    return daemon.call("POST", f"/rollout/{action}", scope, {"actor": actor, **fields})


def start(directory: Path, config: Path, env: dict[str, str], *,
          token: str | None = None) -> subprocess.Popen[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        return start_daemon(config, "daemon.log", token=token)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    directory = tmp_path_factory.mktemp("scopes")
    config = write_setup(directory)
    process = start(directory, config, environment())
    try:
        running = Running(directory, ready_api(directory / "daemon.duckdb"), process)
        wait_until(lambda: running.call("GET", "/events/e0", Scope.READ).status_code == 200,
                   timeout_s=60, what="the first event stored")
        yield running
        running.http.close()
    finally:
        code, log = stop(process)
    assert code == 0, log


@pytest.fixture
def fresh(daemon: Running) -> Running:
    daemon.reset()
    return daemon


def routes() -> list[tuple[str, str, dict[str, Any] | None, Scope]]:
    """Every protected route as a call that succeeds with the scope it needs."""
    reads: list[tuple[str, str, dict[str, Any] | None, Scope]] = [
        ("GET", "/rollout", None, Scope.READ),
        ("GET", "/rollout/history?limit=3", None, Scope.READ),
        ("GET", "/report?format=json", None, Scope.READ),
        ("POST", "/reports", {"format": "markdown"}, Scope.READ),
        ("GET", "/dead-letters?limit=5", None, Scope.READ),
        ("GET", "/metrics", None, Scope.READ),
        ("GET", "/events/e0", None, Scope.READ)]
    commands = [("POST", f"/rollout/{action}", {"actor": "dana", **fields}, Scope.OPERATE)
                for action, fields in ACTIONS]
    return [*reads, *commands, ("POST", "/backup", {"name": "every-route"}, Scope.ADMIN)]


# -- every route, every scope ------------------------------------------------------------------


@pytest.mark.parametrize("scope", list(Scope), ids=str)
def test_every_route_answers_its_scope_and_refuses_a_lower_one_with_403_naming_it(
        fresh: Running, scope: Scope) -> None:
    name = TOKENS[scope][0]
    transitions, folder = len(fresh.history()), fresh.folder()
    allowed = 0
    for method, path, body, needed in routes():
        if body is not None and path == "/backup":
            body = {"name": f"every-route-{scope}"}
        response = fresh.call(method, path, scope, body)
        if scope.includes(needed):
            assert response.status_code == 200, (method, path, response.text)
            allowed += 1
        else:
            assert response.status_code == 403, (method, path, response.text)
            assert response.json() == {"error": f"{method} {path} needs the scope "
                                                f"{needed.value}; the token {name!r} has "
                                                f"{scope.value}"}
            assert response.headers["WWW-Authenticate"] == (
                f'Bearer realm="shadow", error="insufficient_scope", scope="{needed.value}"')
    commands = len(ACTIONS) if scope.includes(Scope.OPERATE) else 0
    assert allowed == {Scope.READ: 7, Scope.OPERATE: 13, Scope.ADMIN: 14}[scope]
    assert len(fresh.history()) == transitions + commands
    backup = [f"every-route-{scope}"] if scope is Scope.ADMIN else []
    assert fresh.folder() == sorted(folder + backup)


def test_every_protected_route_without_a_token_is_401_and_with_an_unknown_one_403(
        fresh: Running) -> None:
    transitions, folder = len(fresh.history()), fresh.folder()
    for method, path, body, _ in routes():
        without = fresh.call(method, path, None, body)
        assert without.status_code == 401, (method, path)
        assert without.headers["WWW-Authenticate"] == 'Bearer realm="shadow"'
        unknown = fresh.http.request(method, path, json=body,
                                     headers=bearer(TOKENS[Scope.ADMIN][2] + "x"))
        assert unknown.status_code == 403, (method, path)
        assert "not one the daemon accepts" in unknown.json()["error"]
    assert (len(fresh.history()), fresh.folder()) == (transitions, folder)
    for public in ("/health", "/ready", "/openapi.json"):
        assert fresh.call("GET", public, None).status_code == 200


def test_a_read_token_scrapes_the_metrics_and_is_refused_a_promote(fresh: Running) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    scrape = fresh.call("GET", "/metrics", Scope.READ)
    assert scrape.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    assert "shadow_events" in families and "shadow_rollout_traffic_ratio" in families
    before = fresh.history()
    promote = command(fresh, "promote", Scope.READ, force=True, reason="the scraper tries")
    assert promote.status_code == 403
    assert "needs the scope operate" in promote.json()["error"]
    through_cli = fresh.cli("rollout", "promote", "--force", "--reason", "x", scope=Scope.READ)
    assert through_cli.returncode == 2 and "Traceback" not in through_cli.stderr
    assert "needs the scope operate; the token 'prometheus' has read" in through_cli.stderr
    assert fresh.history() == before
    assert fresh.call("GET", "/rollout", Scope.READ).json()["percent"] == 0


EXAMPLES = 20
"""Generated calls per operation and token: enough to vary every field, bounded in time."""


@pytest.mark.parametrize("scope", list(Scope), ids=str)
def test_schemathesis_with_each_token_finds_no_route_that_does_more_than_its_scope(
        fresh: Running, scope: Scope) -> None:
    """Generated calls of every operation of the daemon's own description, with one token:
    an operation beyond the token's scope answers 403 naming the scope, whatever the call,
    and nothing a higher scope guards changes; the others answer as described, never 5xx."""
    import schemathesis
    from schemathesis.core.result import Ok

    doc = fresh.call("GET", "/openapi.json", None).json()
    schema = schemathesis.openapi.from_url(fresh.api + "/openapi.json")
    transitions, folder = fresh.history(), fresh.folder()
    answered = {}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        needed = doc["paths"][operation.path][operation.method.lower()].get("x-scope")
        answered[operation.label] = generated_calls(
            fresh.api, operation, scope, None if needed is None else Scope(needed))
    # Every operation but the description's own route, which Schemathesis leaves out.
    assert set(answered) == {f"{m.upper()} {p}" for p, item in doc["paths"].items()
                             for m in item} - {"GET /openapi.json"}
    beyond_scope = {label for label, statuses in answered.items() if statuses == {403}}
    assert beyond_scope == {f"{m} {p}" for (m, p), needed in SCOPES.items()
                            if not scope.includes(needed)}
    if not scope.includes(Scope.OPERATE):
        assert fresh.history() == transitions
    if not scope.includes(Scope.ADMIN):
        assert fresh.folder() == folder


def generated_calls(api: str, operation: Any, scope: Scope, needed: Scope | None) -> set[int]:
    """Call ``operation`` with generated inputs and the token of ``scope``; the statuses seen.

    Beyond the token's scope every call answers 403 naming the scope; within it, none
    answers 401 or 403, and every answer conforms to the description (no 5xx).
    """
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    beyond = needed is not None and not scope.includes(needed)
    statuses: set[int] = set()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def call(case: Any) -> None:
        response = case.call(base_url=api, headers=bearer(TOKENS[scope][2]), timeout=60)
        case.validate_response(response, checks=[
            not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance])
        statuses.add(response.status_code)
        if beyond:
            assert needed is not None
            assert response.status_code == 403, (case.method, case.formatted_path)
            assert f"needs the scope {needed.value}; " in response.json()["error"]
        else:
            assert response.status_code not in (401, 403), response.text

    call()
    return statuses


# -- backups go where the operator said --------------------------------------------------------


@pytest.mark.parametrize(("name", "status", "problem"), [
    ("../escaped.duckdb", 400, "has a path separator"),
    ("..", 400, "has '..'"),
    ("nested/copy.duckdb", 400, "has a path separator"),
    ("ABSOLUTE", 400, "is an absolute path"),
    ("existing.duckdb", 409, "exists; choose a new file name"),
], ids=["dot-dot-slash", "dot-dot", "slash", "absolute", "existing"])
def test_a_backup_name_that_leaves_the_folder_or_exists_is_refused(
        daemon: Running, tmp_path: Path, name: str, status: int, problem: str) -> None:
    daemon.backups.mkdir(exist_ok=True)
    existing = daemon.backups / "existing.duckdb"
    if not existing.exists():
        existing.write_bytes(b"last week's backup")
    outside = tmp_path / "absolute.duckdb"
    name = str(outside) if name == "ABSOLUTE" else name
    folder = daemon.folder()
    response = daemon.call("POST", "/backup", Scope.ADMIN, {"name": name})
    assert response.status_code == status, response.text
    assert problem in response.json()["error"]
    if status == 400:
        assert f"backups are written into {daemon.backups}" in response.json()["error"]
    assert daemon.folder() == folder
    assert existing.read_bytes() == b"last week's backup"
    assert not (daemon.directory / "escaped.duckdb").exists() and not outside.exists()
    assert not (daemon.directory / "nested").exists()


def test_a_good_backup_name_is_written_inside_the_folder_for_its_owner_only(
        daemon: Running) -> None:
    response = daemon.call("POST", "/backup", Scope.ADMIN, {"name": "before-upgrade.duckdb"})
    assert response.status_code == 200, response.text
    copy = daemon.backups / "before-upgrade.duckdb"
    assert response.json()["path"] == str(copy)
    assert os.stat(copy).st_mode & 0o777 == 0o600
    with Store(copy, read_only=True) as store:
        assert store.count("events") == response.json()["rows"]["events"]
    assert not [p for p in daemon.backups.iterdir() if p.name.startswith(".")]
    again = daemon.call("POST", "/backup", Scope.ADMIN, {"name": "before-upgrade.duckdb"})
    assert again.status_code == 409
    logged = [e for e in daemon.log() if e.get("event") == "backup requested"]
    assert {"caller": "ops", "name": "before-upgrade.duckdb"}.items() <= logged[-1].items()


# -- a trail that knows who --------------------------------------------------------------------


def test_the_audit_record_names_the_token_beside_the_claimed_actor(fresh: Running) -> None:
    paused = command(fresh, "pause", Scope.OPERATE, actor="ana@example.com",
                     reason="looking at the French tickets")
    assert paused.status_code == 200, paused.text
    expected = "ana@example.com (claimed, token oncall)"
    assert f"by {expected}: looking at the French tickets" in paused.json()["transition"]
    last = fresh.history()[-1]
    assert (last["action"], last["actor"], last["token"]) == ("pause", "ana@example.com",
                                                               "oncall")

    history = fresh.cli("rollout", "history", "--limit", "1", scope=Scope.READ)
    assert history.returncode == 0, history.stderr
    assert history.stdout.rstrip().endswith(f"by {expected}: looking at the French tickets")
    status = fresh.cli("rollout", "status", scope=Scope.READ)
    assert f"last change: pause by {expected} at " in status.stdout
    report = fresh.call("GET", "/report?format=json", Scope.READ).json()
    (entry,) = [t for t in report["owner"]["rollout"]["timeline"]
                if t["reason"] == "looking at the French tickets"]
    assert (entry["actor"], entry["token"]) == ("ana@example.com", "oncall")
    html = fresh.cli("report", "--format", "html", scope=Scope.READ)
    assert html.returncode == 0 and f"<td>{expected}</td>" in html.stdout

    transitions = [e for e in fresh.log() if e.get("event") == "rollout transition"]
    assert {"action": "pause", "actor": "ana@example.com", "caller": "oncall"}.items() \
        <= transitions[-1].items()
    calls = [e for e in fresh.log() if e.get("event") == "control api call"]
    assert {"caller": "oncall", "path": "/rollout/pause", "status": 200}.items() \
        <= calls[-1].items()


# -- configuration ------------------------------------------------------------------------------


def test_a_single_token_is_one_admin_token_and_the_daemon_warns_how_to_split_it(
        tmp_path: Path) -> None:
    config = write_setup(tmp_path, api="    port: 0")
    token = "the-one-legacy-token-for-everything"
    process = start(tmp_path, config, {}, token=token)
    try:
        api = ready_api(tmp_path / "daemon.duckdb")
        with httpx.Client(base_url=api, trust_env=False, timeout=60) as http:
            made = http.post("/backup", json={"name": "legacy"}, headers=bearer(token))
            promoted = http.post("/rollout/promote", headers=bearer(token),
                                 json={"actor": "dana", "force": True, "reason": "go"})
            history = http.get("/rollout/history", headers=bearer(token)).json()
    finally:
        code, log = stop(process)
    assert code == 0, log
    assert made.status_code == 200 and promoted.status_code == 200, log
    assert (history[-1]["actor"], history[-1]["token"]) == ("dana", "SHADOW_API_TOKEN")
    (warning,) = [json.loads(line) for line in log.splitlines()
                  if '"one api token has every scope"' in line]
    assert warning["level"] == "warning" and warning["variable"] == "SHADOW_API_TOKEN"
    assert "daemon.api.tokens" in warning["advice"] and "read:" in warning["advice"]


@pytest.mark.parametrize(("api", "env", "tokens_file", "problem"), [
    (SCOPED_API, {"SCOPES_READ_TOKEN": "r" * 24}, None,
     "daemon.api.tokens.1.env: set the environment variable SCOPES_OPERATE_TOKEN to the token "
     "of 'oncall'"),
    (SCOPED_API, environment(), "ops admin not-a-digest\n",
     "api-tokens, line 1: expected the token's SHA-256 as 64 hex digits"),
    (SCOPED_API, environment(), f"ops root {'0' * 64}\n",
     "line 1: the scope 'root' is not one of read, operate, admin"),
    (SCOPED_API, environment(), "ops admin\n",
     "line 1: expected NAME SCOPE SHA256-HEX, got 2 field(s)"),
    ("    tokens: [{name: ops, env: A, scope: root}]", {}, None,
     "daemon.api.tokens.0.scope: input should be 'read', 'operate' or 'admin', got 'root'"),
    ("    tokens: [{name: ops, env: A}]", {}, None,
     "daemon.api.tokens.0: give either scope or scopes: read, operate or admin"),
    ("    tokens: [{name: ops, env: A, scope: read}, {name: ops, env: B, scope: read}]", {},
     None, "daemon.api.tokens: two tokens have the name 'ops'; each needs its own"),
    ("    tokens: [{name: a b, env: A, scope: read}]", {}, None,
     "daemon.api.tokens.0.name: expected a match of"),
], ids=["variable-unset", "not-a-digest", "unknown-scope", "short-line", "config-scope",
        "no-scope", "same-name", "bad-name"])
def test_a_token_configuration_error_names_the_setting_and_exits_2(
        tmp_path: Path, api: str, env: dict[str, str], tokens_file: str | None,
        problem: str) -> None:
    config = write_setup(tmp_path, api=api)
    if tokens_file is not None:
        (tmp_path / "api-tokens").write_text(tokens_file, encoding="utf-8")
    process = start(tmp_path, config, env)
    process.wait(timeout=60)
    err = finished(process)
    assert process.returncode == 2, err
    assert problem in err and "Traceback" not in err
    assert not (tmp_path / "daemon.duckdb").exists()


def test_a_tokens_file_others_may_write_is_refused(tmp_path: Path) -> None:
    config = write_setup(tmp_path)
    (tmp_path / "api-tokens").chmod(0o666)
    process = start(tmp_path, config, environment())
    process.wait(timeout=60)
    err = finished(process)
    assert process.returncode == 2
    assert "any user may write it" in err and "chmod o-w" in err


def test_shadow_token_prints_a_new_token_and_the_line_that_grants_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    made = [subprocess.run([sys.executable, "-m", "shadow", "token", "ana@example.com",
                            "--scope", "operate"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60, check=False) for _ in range(2)]
    tokens = []
    for result in made:
        assert result.returncode == 0, result.stderr
        name, scope, digest = result.stdout.split()
        prefix = "token of ana@example.com (operate), shown this once: "
        assert result.stderr.startswith(prefix)
        token = result.stderr.strip().removeprefix(prefix)
        assert (name, scope) == ("ana@example.com", "operate")
        assert digest == hashlib.sha256(token.encode()).hexdigest()
        assert len(token) >= 40 and token not in result.stdout
        tokens.append(token)
    assert tokens[0] != tokens[1]
