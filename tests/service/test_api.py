"""The control API: authentication, status codes, its description, its client, and the CLI on it.

The HTTP layer is tested against :class:`FakeControl`, which records calls and
answers canned values; one test drives a real rollout controller over a real
store through HTTP. The CLI tests run ``python -m shadow`` in subprocesses
against a server in this process, found through a ``DaemonFile``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from rollout import audit
from rollout.controller import Controller
from rollout.state import Action, Refused, Status
from rollout.views import describe, status_view
from shadow.config.daemon import Scope
from shadow.core.errors import ConfigError
from shadow.reports import render
from shadow.reports.summary import CoreReport, core_report
from shadow.service.api import METRICS_TYPE, ApiServer, ApiState
from shadow.service.api_client import DaemonClient, DaemonUnavailable, find_daemon
from shadow.service.api_tokens import ApiToken, Tokens
from shadow.service.control import DaemonFile, DaemonLock
from shadow.service.openapi import openapi, public_operations, required_scopes
from shadow.store.backup import BackupExists
from shadow.store.database import Store
from shadow.store.verdicts import Problem, ProblemKind, VerdictRefused, verdict_named
from tests.cli.test_cli import assert_usage_error, run
from tests.rollout.test_state import PLAN, ticking

TOKEN = "s3cret-token-for-tests"
SCOPED = {Scope.READ: "r3ad-token-for-tests", Scope.OPERATE: "0perate-token-for-tests",
          Scope.ADMIN: TOKEN}
STATUS = {
    "rollout": "from-the-daemon", "candidate": "triage", "version": "7", "step": 1, "steps": 3,
    "percent": 10.0, "status": "progressing", "live": True, "live_share": 0.09,
    "holdout": 0.1, "review": 0.0, "step_started_at": "2026-01-05T00:00:00+00:00",
    "promotion": {"phase": "inconclusive", "checks": [
        {"name": "agreement", "phase": "inconclusive", "detail": "41 of 100 needed"}]},
    "rollback": None, "stored_evaluations": {}, "warnings": ["labels arrive slowly"],
    "last_transition": {"revision": 2, "at": "2026-01-05T00:00:00+00:00", "actor": "dana",
                        "token": "ops", "action": "promote", "from_step": 0, "to_step": 1,
                        "from_status": "progressing", "to_status": "progressing",
                        "percent": 10.0, "reason": "owner approved", "evidence": {}},
}
HISTORY = [{"revision": 1, "at": "2026-01-04T00:00:00+00:00", "actor": "controller",
            "action": "start", "from_step": None, "to_step": 0, "from_status": None,
            "to_status": "progressing", "percent": 0.0, "reason": "from-the-daemon start",
            "evidence": {}}]
EVENT = {"event": {"event_id": "e1", "key": "t1", "occurred_at": "2026-01-05T00:00:00+00:00",
                   "payload": {"subject": "from-the-daemon"}}, "predictions": []}
REVIEW = {"review_id": "rev_1", "event_id": "e1", "key": "t1", "candidate": "triage",
          "version": "7", "rollout": "triage", "step": 1,
          "proposed_at": "2026-01-05T00:00:00+00:00", "published_at": None,
          "proposal": {"review_id": "rev_1", "output": {"category": "billing"},
                       "evidence": {"subject": "refund"}}}
DEAD_LETTER = {"kind": "event", "source": "kafka:tickets", "position": "0:17",
               "reason": "not JSON", "raw": "{from-the-daemon", "received_at": "2026-01-05"}


class FakeControl:
    """A daemon's control surface with canned answers; records every call."""

    def __init__(self, report: CoreReport | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.tokens: list[str] = []
        self.ready = True
        self.fail = False
        self.report_data = report
        self.hold: threading.Event | None = None
        self.holding = threading.Event()
        self.dead_letter: dict[str, Any] = DEAD_LETTER
        self.refusing = {"resume"}
        """Commands refused as the rollout's state would refuse them."""

    def health(self) -> dict[str, Any]:
        self.calls.append(("health", None))
        return {"status": "alive", "pid": 4242}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"reasons": [] if self.ready else ["starting"]}

    def rollout_status(self) -> dict[str, Any]:
        self.calls.append(("rollout_status", None))
        if self.hold is not None:
            self.holding.set()
            self.hold.wait(10)
        if self.fail:
            raise RuntimeError("secret detail of /var/lib/shadow")
        return STATUS

    def rollout_history(self, limit: int | None) -> list[dict[str, Any]]:
        self.calls.append(("rollout_history", limit))
        return HISTORY

    def rollout_command(self, action: str, *, actor: str, reason: str, token: str,
                        full: bool = False, force: bool = False) -> dict[str, Any]:
        self.calls.append(("rollout_command", (action, actor, reason, full, force)))
        self.tokens.append(token)
        if action in self.refusing:
            raise Refused("rollout 'from-the-daemon' is progressing: only a paused rollout "
                          "resumes")
        return {"transition": f"{action} from the daemon by {actor}: {reason}",
                "state": {"step": 2, "percent": 100.0, "status": "promoted"}}

    def report(self, fmt: str) -> str:
        self.calls.append(("report", fmt))
        assert self.report_data is not None
        if fmt == "markdown":  # the owners' Markdown needs a full report; a marked stand-in
            return f"# Readiness report\n\nevents read {self.report_data.events_read:,}\n"
        if fmt == "json":
            return render.to_json(self.report_data.as_dict())
        return render.to_table(self.report_data)

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("dead_letters", limit))
        return [self.dead_letter]

    def event(self, event_id: str, candidate: str | None) -> dict[str, Any]:
        self.calls.append(("event", (event_id, candidate)))
        return EVENT

    def metrics(self) -> str:
        self.calls.append(("metrics", None))
        return "# TYPE shadow_events_total counter\nshadow_events_total 3\n"

    def reviews(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("reviews", limit))
        return [REVIEW]

    def review_verdict(self, review_id: str, *, verdict: str, output: Any,
                       reviewer: str | None, token: str) -> dict[str, Any]:
        self.calls.append(("review_verdict", (review_id, verdict, output, reviewer)))
        self.tokens.append(token)
        kind = {"rev_decided": ProblemKind.DECIDED, "rev_unknown": ProblemKind.UNKNOWN,
                "rev_withdrawn": ProblemKind.CLOSED}.get(review_id)
        if kind is not None:
            raise VerdictRefused(Problem(kind, f"refused as {kind.value}"))
        word = verdict_named(verdict)
        assert word is not None
        return {"review_id": review_id, "verdict": word,
                "status": {"approve": "approved", "edit": "edited", "reject": "rejected"}[word],
                "output": output, "reviewer": reviewer or token,
                "decided_at": "2026-03-02T12:00:00+00:00", "source": f"api:{token}",
                "published_at": None}

    def backup(self, name: str, *, token: str) -> dict[str, Any]:
        self.calls.append(("backup", name))
        self.tokens.append(token)
        if name == "taken.duckdb":
            raise BackupExists("backup target /srv/backups/taken.duckdb exists; choose a new "
                               "file name (a backup never overwrites)")
        return {"path": f"/srv/backups/{name}", "rows": {"events": 3}, "size_bytes": 12288,
                "seconds": 0.01, "taken_at": "2026-03-02T12:00:00+00:00"}


@pytest.fixture(scope="module")
def report_data(tmp_path_factory: pytest.TempPathFactory) -> CoreReport:
    """A real report of an empty store, marked so that it is recognisable."""
    with Store(tmp_path_factory.mktemp("report") / "empty.duckdb") as store:
        report = core_report(store)
    return dataclasses.replace(report, events_read=4242)


@pytest.fixture
def fake(report_data: CoreReport) -> FakeControl:
    return FakeControl(report_data)


def tokens(token: str = TOKEN) -> Tokens:
    """One token of every scope; the admin one is ``token``."""
    return Tokens([ApiToken.of("scraper", Scope.READ, SCOPED[Scope.READ]),
                   ApiToken.of("oncall", Scope.OPERATE, SCOPED[Scope.OPERATE]),
                   ApiToken.of("ops", Scope.ADMIN, token)])


@pytest.fixture
def server(fake: FakeControl) -> Iterator[ApiServer]:
    with ApiServer(fake, port=0, tokens=tokens()) as running:
        yield running


@pytest.fixture
def http(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


COMMANDS = ("promote", "pause", "resume", "rollback", "restart", "abort")
BODIES = {**{f"/rollout/{a}": {"actor": "dana", "reason": "tests"} for a in COMMANDS},
          "/reports": {}, "/backup": {"name": "shadow-1.duckdb"},
          "/reviews/{review_id}/verdict": {"verdict": "approve"}}
SCOPES = {("GET", "/rollout"): Scope.READ, ("GET", "/rollout/history"): Scope.READ,
          ("GET", "/report"): Scope.READ, ("POST", "/reports"): Scope.READ,
          ("GET", "/dead-letters"): Scope.READ, ("GET", "/metrics"): Scope.READ,
          ("GET", "/events/{event_id}"): Scope.READ, ("GET", "/reviews"): Scope.READ,
          ("POST", "/reviews/{review_id}/verdict"): Scope.OPERATE,
          **{("POST", f"/rollout/{a}"): Scope.OPERATE for a in COMMANDS},
          ("POST", "/backup"): Scope.ADMIN}
"""What each route needs, as the issue sets it out: written here, not read from the code."""


def operations(public: bool) -> list[tuple[str, str]]:
    doc = openapi()
    everything = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    chosen = public_operations(doc) if public else everything - public_operations(doc)
    return sorted(chosen)


def call(http: httpx.Client, method: str, path: str, headers: dict[str, str] | None = None
         ) -> httpx.Response:
    """``method path``, a path template (``/events/{event_id}``) filled in."""
    body = BODIES.get(path) if method == "POST" else None
    return http.request(method, path.format(event_id="e1", review_id="rev_1"), json=body,
                        headers=headers or {})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


# -- the server --------------------------------------------------------------------------


def test_the_server_binds_loopback_by_default_and_does_nothing_until_started() -> None:
    server = ApiServer(FakeControl(), tokens=tokens())
    assert (server.host, server.port, server.state) == ("127.0.0.1", 8787, ApiState.NEW)
    server.stop()  # before start: nothing to stop, and no start afterwards
    assert server.state is ApiState.STOPPED


def test_the_server_listens_on_loopback(server: ApiServer) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}" and server.port != 0
    # A whole request, not a bare connect: a connection the server has accepted but not yet
    # handled when it stops is closed by nobody (asyncio drops the pending accept task).
    assert httpx.get(f"http://127.0.0.1:{server.port}/health", trust_env=False).is_success


def test_an_api_without_a_token_cannot_be_built() -> None:
    with pytest.raises(ConfigError, match="SHADOW_API_TOKEN"):
        ApiServer(FakeControl(), tokens=Tokens([]))


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_refused(token: str) -> None:
    with pytest.raises(ConfigError, match="'ops' is empty"):
        ApiToken.of("ops", Scope.ADMIN, token)


def test_two_tokens_with_one_name_or_one_value_are_refused() -> None:
    with pytest.raises(ConfigError, match="two tokens are named 'ops'"):
        Tokens([ApiToken.of("ops", Scope.READ, "a" * 20), ApiToken.of("ops", Scope.ADMIN,
                                                                       "b" * 20)])
    with pytest.raises(ConfigError, match="'ops' and 'scraper' have the same value"):
        Tokens([ApiToken.of("ops", Scope.ADMIN, "a" * 20),
                ApiToken.of("scraper", Scope.READ, "a" * 20 + "\n")])


def test_stop_is_idempotent_and_a_stopped_server_does_not_start_again(fake: FakeControl) -> None:
    server = ApiServer(fake, port=0, tokens=tokens())
    server.start()
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    with pytest.raises(Exception, match="stopped"):
        server.start()


def test_a_port_in_use_is_a_configuration_error(server: ApiServer) -> None:
    second = ApiServer(FakeControl(), port=server.port, tokens=tokens())
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        second.start()
    assert second.state is ApiState.STOPPED


# -- authentication -------------------------------------------------------------------------


def test_health_ready_and_the_description_need_no_token(http: httpx.Client,
                                                        fake: FakeControl) -> None:
    assert operations(public=True) == [("GET", "/health"), ("GET", "/openapi.json"),
                                       ("GET", "/ready"), ("GET", "/review")]
    health = http.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})  # reveals nothing
    assert fake.calls == []
    assert http.get("/ready").json() == {"ready": True, "checks": {"reasons": []}}
    assert http.get("/openapi.json").json()["openapi"] == "3.1.0"


def test_health_with_a_token_gives_the_daemon_s_details(http: httpx.Client) -> None:
    for token in SCOPED.values():
        assert http.get("/health", headers=bearer(token)).json() == {"status": "alive",
                                                                    "pid": 4242}
    assert http.get("/health", headers=bearer("wrong")).json() == {"status": "ok"}


def test_not_ready_is_503_with_the_checks(http: httpx.Client, fake: FakeControl) -> None:
    fake.ready = False
    response = http.get("/ready")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "checks": {"reasons": ["starting"]}}


@pytest.mark.parametrize("headers", [{}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": "Bearer"}, {"Authorization": TOKEN}])
def test_every_protected_route_refuses_an_unauthenticated_call_with_401(
        http: httpx.Client, fake: FakeControl, headers: dict[str, str]) -> None:
    protected = operations(public=False)
    assert len(protected) == 16
    for method, path in protected:
        response = call(http, method, path, headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Bearer" in response.json()["error"]
    assert fake.calls == []


@pytest.mark.parametrize("token", ["wrong", TOKEN + "x", TOKEN[:-1], TOKEN.upper()])
def test_every_protected_route_refuses_a_wrong_token_with_403(
        http: httpx.Client, fake: FakeControl, token: str) -> None:
    for method, path in operations(public=False):
        response = call(http, method, path, bearer(token))
        assert response.status_code == 403, (method, path)
        assert "not one the daemon accepts" in response.json()["error"]
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert fake.calls == []


def test_a_token_that_is_not_utf_8_is_refused_with_403(server: ApiServer,
                                                        fake: FakeControl) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(b"GET /rollout HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80"
                    b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403 ") and b"not one the daemon accepts" in answer
    assert fake.calls == []


def test_every_protected_route_answers_the_right_token(http: httpx.Client,
                                                       fake: FakeControl) -> None:
    fake.refusing.clear()
    for method, path in operations(public=False):
        assert call(http, method, path, bearer()).status_code == 200, (method, path)
    assert {name for name, _ in fake.calls} == {
        "rollout_status", "rollout_history", "rollout_command", "report", "dead_letters",
        "event", "metrics", "backup", "reviews", "review_verdict"}


def test_each_route_declares_its_scope_in_the_description() -> None:
    doc = openapi()
    assert required_scopes(doc) == SCOPES
    for (method, path), scope in SCOPES.items():
        op = doc["paths"][path][method.lower()]
        assert op["x-scope"] == scope.value
        assert op["security"] == [{"bearer": [scope.value]}]
        assert scope.value in op["responses"]["403"]["description"]
    assert set(operations(public=False)) == set(SCOPES)


def test_scopes_are_ordered_each_including_those_before_it() -> None:
    assert [s.value for s in Scope] == ["read", "operate", "admin"]
    held = {s: {n for n in Scope if s.includes(n)} for s in Scope}
    assert held == {Scope.READ: {Scope.READ}, Scope.OPERATE: {Scope.READ, Scope.OPERATE},
                    Scope.ADMIN: set(Scope)}


@pytest.mark.parametrize("scope", list(Scope), ids=str)
def test_each_scope_calls_its_routes_and_gets_403_naming_the_scope_on_the_others(
        http: httpx.Client, fake: FakeControl, scope: Scope) -> None:
    fake.refusing.clear()
    for (method, path), needed in SCOPES.items():
        fake.calls.clear()
        response = call(http, method, path, bearer(SCOPED[scope]))
        if scope.includes(needed):
            assert response.status_code == 200, (method, path, response.text)
            assert fake.calls, (method, path)
        else:
            assert response.status_code == 403, (method, path)
            assert response.json()["error"].startswith(
                f"{method} {path.format(review_id='rev_1')} needs the scope "
                f"{needed.value}; the token ")
            assert f"has {scope.value}" in response.json()["error"]
            assert response.headers["WWW-Authenticate"] == (
                f'Bearer realm="shadow", error="insufficient_scope", scope="{needed.value}"')
            assert fake.calls == [], (method, path)


def test_refusals_are_logged_as_warnings_with_the_token_s_name(http: httpx.Client) -> None:
    with structlog.testing.capture_logs() as logs:
        call(http, "POST", "/rollout/promote", bearer(SCOPED[Scope.READ]))
        call(http, "GET", "/rollout", bearer(SCOPED[Scope.READ]))
        call(http, "GET", "/rollout", bearer("wrong"))
    entries = [{k: e.get(k) for k in ("event", "log_level", "caller", "path", "needs")}
               for e in logs if e["event"].startswith("control api")]
    assert entries == [
        {"event": "control api refused a token without the scope", "log_level": "warning",
         "caller": "scraper", "path": "/rollout/promote", "needs": "operate"},
        {"event": "control api refused an unknown token", "log_level": "warning",
         "caller": None, "path": "/rollout", "needs": None}]


@pytest.mark.parametrize(("body", "problem"), [
    ({}, "name: Field required"),
    ({"name": 7}, "name: Input should be a valid string"),
    ({"name": ""}, "name: String should have at least 1 character"),
    ({"name": "x" * 201}, "name: String should have at most 200 characters"),
    ({"path": "/x.duckdb"}, "name: Field required; path: Extra inputs are not permitted"),
])
def test_a_backup_body_names_what_is_wrong(http: httpx.Client, fake: FakeControl,
                                           body: dict[str, Any], problem: str) -> None:
    response = http.post("/backup", json=body, headers=bearer())
    assert response.status_code == 400
    assert response.json() == {"error": problem}
    assert fake.calls == []


def test_a_backup_is_asked_by_name_with_the_token_s_name_and_a_taken_name_is_409(
        http: httpx.Client, fake: FakeControl) -> None:
    made = http.post("/backup", json={"name": "before-upgrade.duckdb"}, headers=bearer())
    assert made.json()["path"] == "/srv/backups/before-upgrade.duckdb"
    taken = http.post("/backup", json={"name": "taken.duckdb"}, headers=bearer())
    assert taken.status_code == 409 and "exists" in taken.json()["error"]
    assert fake.tokens == ["ops", "ops"]
    with pytest.raises(BackupExists, match="exists"):
        DaemonClient(str(http.base_url), TOKEN).backup("taken.duckdb")


def test_an_unknown_route_is_401_without_a_token_and_404_with_it(http: httpx.Client) -> None:
    assert http.get("/secrets").status_code == 401
    response = http.get("/secrets", headers=bearer())
    assert response.status_code == 404 and response.json() == {
        "error": "no such route: GET /secrets"}
    wrong_method = http.delete("/rollout", headers=bearer())
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "GET"


def test_a_method_a_known_route_does_not_take_is_405_naming_the_ones_it_does(
        http: httpx.Client, fake: FakeControl) -> None:
    for method, path, allowed in [("POST", "/rollout/history", "GET"),
                                  ("GET", "/rollout/promote", "POST"),
                                  ("PUT", "/backup", "POST")]:
        response = http.request(method, path, headers=bearer())
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["Allow"] == allowed
    assert fake.calls == []


def test_metrics_can_be_opened_to_scrapers_without_a_token(fake: FakeControl) -> None:
    assert ("GET", "/metrics") in public_operations(openapi(metrics_token_required=False))
    with ApiServer(fake, port=0, tokens=tokens(), metrics_token_required=False) as server, \
            httpx.Client(base_url=server.url, trust_env=False) as http:
        assert http.get("/metrics").status_code == 200
        assert http.get("/rollout").status_code == 401


# -- the routes -----------------------------------------------------------------------------


def test_the_description_lists_exactly_the_served_routes(server: ApiServer) -> None:
    served = {(r.method, r.resource.canonical) for r in server.application().router.routes()
              if r.resource is not None}
    described = {(m.upper(), p) for p, item in openapi()["paths"].items() for m in item}
    assert served == described
    served_doc = httpx.get(server.url + "/openapi.json", trust_env=False).json()
    assert served_doc == json.loads(json.dumps(openapi()))


def test_every_schema_the_description_refers_to_is_in_it() -> None:
    doc = openapi()
    text = json.dumps(doc)
    refs = {ref.removeprefix("#/components/schemas/")
            for ref in re.findall(r'"\$ref": "([^"]+)"', text)}
    assert refs and refs <= set(doc["components"]["schemas"])


def test_the_schemas_say_what_the_server_refuses() -> None:
    schemas = openapi()["components"]["schemas"]
    for name in ("Command", "ReasonedCommand", "PromoteCommand"):
        assert schemas[name]["properties"]["actor"]["pattern"] == r"\S", name
        assert schemas[name]["additionalProperties"] is False
    assert schemas["ReasonedCommand"]["required"] == ["actor", "reason"]
    assert schemas["Command"]["properties"]["full"]["const"] is False
    name = schemas["BackupRequest"]["properties"]["name"]
    for refused in ["", " ", ".hidden", "~x", "a/b", "a\\b", "x..y", "C:copy", "a\x01"]:
        assert not re.search(name["pattern"], refused), refused
    assert re.search(name["pattern"], "before-upgrade.duckdb")


@pytest.mark.parametrize(("path", "body", "problem"), [
    ("/rollout/pause", {"actor": "  "},
     "actor: the name of the person giving the command is required"),
    ("/rollout/abort", {"actor": "dana", "reason": " "},
     "reason: abort needs a reason, for the audit trail"),
    ("/rollout/pause", {"actor": "dana", "full": True},
     "full: only promote takes it, not pause"),
    ("/rollout/restart", {"actor": "dana", "force": 0}, "force: Input should be false"),
])
def test_a_refused_command_says_why_as_before(http: httpx.Client, fake: FakeControl, path: str,
                                              body: dict[str, Any], problem: str) -> None:
    response = http.post(path, headers=bearer(), json=body)
    assert (response.status_code, response.json()) == (400, {"error": problem})
    assert fake.calls == []


def test_an_answer_the_models_refuse_is_a_500_not_a_drifted_body(
        http: httpx.Client, fake: FakeControl) -> None:
    fake.dead_letter = {**DEAD_LETTER, "unexpected": "a field the description lacks"}
    response = http.get("/dead-letters", headers=bearer())
    assert response.status_code == 500 and "log" in response.json()["error"]


def test_status_and_history_come_from_the_control(http: httpx.Client,
                                                  fake: FakeControl) -> None:
    assert http.get("/rollout", headers=bearer()).json() == STATUS
    assert http.get("/rollout/history?limit=5", headers=bearer()).json() == HISTORY
    http.get("/rollout/history", headers=bearer())
    assert fake.calls[1:] == [("rollout_history", 5), ("rollout_history", None)]


@pytest.mark.parametrize("query", ["limit=0", "limit=-3", "limit=ten", "limit=1001"])
def test_a_bad_limit_is_400(http: httpx.Client, query: str) -> None:
    response = http.get(f"/dead-letters?{query}", headers=bearer())
    assert response.status_code == 400 and "limit" in response.json()["error"]


def test_a_command_passes_the_person_and_the_reason(http: httpx.Client,
                                                    fake: FakeControl) -> None:
    response = http.post("/rollout/promote", headers=bearer(),
                         json={"actor": "dana", "full": True, "reason": "owner approved"})
    assert response.status_code == 200
    assert response.json()["transition"] == "promote from the daemon by dana: owner approved"
    http.post("/rollout/pause", headers=bearer(SCOPED[Scope.OPERATE]), json={"actor": "dana"})
    assert fake.calls == [
        ("rollout_command", ("promote", "dana", "owner approved", True, False)),
        ("rollout_command", ("pause", "dana", "pause by dana", False, False))]
    assert fake.tokens == ["ops", "oncall"]


def test_a_refused_transition_is_409_with_the_message(http: httpx.Client) -> None:
    response = http.post("/rollout/resume", headers=bearer(), json={"actor": "dana"})
    assert response.status_code == 409
    assert response.json() == {"error": "rollout 'from-the-daemon' is progressing: only a "
                                        "paused rollout resumes"}


@pytest.mark.parametrize("action", ["rollback", "abort"])
@pytest.mark.parametrize("reason", [None, "", "  "])
def test_rollback_and_abort_need_a_reason(http: httpx.Client, fake: FakeControl, action: str,
                                          reason: str | None) -> None:
    body = {"actor": "dana"} | ({} if reason is None else {"reason": reason})
    response = http.post(f"/rollout/{action}", headers=bearer(), json=body)
    assert response.status_code == 400 and "reason" in response.json()["error"]
    assert fake.calls == []


def test_an_unknown_action_is_404(http: httpx.Client, fake: FakeControl) -> None:
    response = http.post("/rollout/start", headers=bearer(), json={"actor": "dana"})
    assert response.status_code == 404 and "promote, pause" in response.json()["error"]
    assert fake.calls == []


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{not json", "not JSON"),
    (b"[1]", "JSON object"),
    (b"{}", "actor"),
    (b'{"actor": " "}', "actor"),
    (b'{"actor": "dana", "full": "yes"}', "full"),
    (b'{"actor": "dana", "urgent": true}', "urgent"),
    (b'{"actor": "dana", "force": true, "reason": "x"}', "only promote"),
])
def test_a_malformed_command_is_400(http: httpx.Client, fake: FakeControl, body: bytes,
                                    fragment: str) -> None:
    response = http.post("/rollout/pause", headers=bearer() | {"Content-Type": "application/json"},
                         content=body)
    assert response.status_code == 400 and fragment in response.json()["error"]
    assert fake.calls == []


def test_a_body_too_large_is_413(http: httpx.Client, fake: FakeControl) -> None:
    response = http.post("/rollout/pause", headers=bearer(),
                         json={"actor": "dana", "reason": "x" * 100_000})
    assert response.status_code == 413 and "too large" in response.json()["error"]
    assert fake.calls == []


def test_surrounding_whitespace_of_the_configured_token_is_ignored(fake: FakeControl) -> None:
    with ApiServer(fake, port=0, tokens=tokens(f" {TOKEN}\n")) as server:
        assert DaemonClient(server.url, TOKEN).rollout_status() == STATUS


@pytest.mark.parametrize(("fmt", "media"), [("json", "application/json"),
                                            ("markdown", "text/markdown"),
                                            ("table", "text/plain")])
def test_reports_come_in_each_format_with_its_content_type(
        http: httpx.Client, report_data: CoreReport, fmt: str, media: str) -> None:
    posted = http.post("/reports", headers=bearer(), json={"format": fmt})
    got = http.get(f"/report?format={fmt}", headers=bearer())
    for response in (posted, got):
        assert response.status_code == 200
        assert response.headers["Content-Type"] == f"{media}; charset=utf-8"
        assert "4,242" in response.text or '"events_read": 4242' in response.text
    assert http.post("/reports", headers=bearer(), json={"format": "pdf"}).status_code == 400
    assert http.post("/reports", headers=bearer(), json={"fmt": "json"}).status_code == 400


def test_metrics_are_prometheus_text(http: httpx.Client) -> None:
    response = http.get("/metrics", headers=bearer())
    assert response.headers["Content-Type"] == METRICS_TYPE
    assert response.text.endswith("shadow_events_total 3\n")


def test_dead_letters_come_from_the_control(http: httpx.Client, fake: FakeControl) -> None:
    response = http.get("/dead-letters?limit=3", headers=bearer())
    assert response.json() == {"dead_letters": [DEAD_LETTER]}
    assert fake.calls == [("dead_letters", 3)]


def test_open_reviews_come_from_the_control(http: httpx.Client, fake: FakeControl) -> None:
    response = http.get("/reviews?status=open&limit=5", headers=bearer())
    assert response.status_code == 200, response.text
    assert response.json() == {"reviews": [REVIEW]}
    assert fake.calls == [("reviews", 5)]


@pytest.mark.parametrize("query", ["status=approved", "limit=0", "limit=1001"])
def test_only_open_reviews_are_listed_within_the_limit(http: httpx.Client, fake: FakeControl,
                                                      query: str) -> None:
    response = http.get(f"/reviews?{query}", headers=bearer())
    assert response.status_code == 400
    assert response.json()["error"].startswith(query.split("=")[0] + ":")
    assert fake.calls == []


def test_a_verdict_names_the_token_and_passes_the_reviewer(http: httpx.Client,
                                                           fake: FakeControl) -> None:
    edited = {"actions": [{"tool": "send_reply", "arguments": {"body": "Hi"}}]}
    response = http.post("/reviews/rev_1/verdict", headers=bearer(SCOPED[Scope.OPERATE]),
                         json={"verdict": "edit", "output": edited, "reviewer": "sam"})
    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["output"]) == ("edited", edited)
    assert fake.calls == [("review_verdict", ("rev_1", "edit", edited, "sam"))]
    assert fake.tokens == ["oncall"]


@pytest.mark.parametrize(("review_id", "status"), [
    ("rev_unknown", 404), ("rev_decided", 409), ("rev_withdrawn", 409)])
def test_a_refused_verdict_has_its_status(http: httpx.Client, review_id: str,
                                          status: int) -> None:
    response = http.post(f"/reviews/{review_id}/verdict", headers=bearer(),
                         json={"verdict": "approve"})
    assert response.status_code == status
    assert response.json()["error"].startswith("refused as ")


@pytest.mark.parametrize("body", [{"verdict": "edit"}, {"verdict": "edit", "output": None},
                                  {"verdict": "maybe"}, {"verdict": "approve", "extra": 1}])
def test_a_malformed_verdict_is_400(http: httpx.Client, fake: FakeControl,
                                    body: dict[str, Any]) -> None:
    response = http.post("/reviews/rev_1/verdict", headers=bearer(), json=body)
    assert response.status_code == 400, response.text
    assert fake.calls == []


def test_an_unexpected_error_is_a_generic_500_with_the_traceback_in_the_log(
        http: httpx.Client, fake: FakeControl) -> None:
    fake.fail = True
    with structlog.testing.capture_logs() as logs:
        response = http.get("/rollout", headers=bearer())
    assert response.status_code == 500
    assert "secret" not in response.text and "log" in response.json()["error"]
    (entry,) = [e for e in logs if e["event"] == "control api request failed"]
    assert entry["log_level"] == "error" and entry["exc_info"] is True


def test_health_answers_while_a_control_call_blocks(http: httpx.Client, fake: FakeControl,
                                                    server: ApiServer) -> None:
    fake.hold = threading.Event()
    answers: list[int] = []
    slow = threading.Thread(target=lambda: answers.append(
        httpx.get(server.url + "/rollout", headers=bearer(), trust_env=False).status_code))
    slow.start()
    try:
        assert fake.holding.wait(5)
        assert http.get("/health", timeout=2).status_code == 200
        assert answers == []
    finally:
        fake.hold.set()
        slow.join(10)
    assert answers == [200]


def test_health_and_readiness_answer_while_every_worker_waits_on_the_pipeline(
    http: httpx.Client, fake: FakeControl, server: ApiServer
) -> None:
    fake.hold = threading.Event()
    answers: list[int] = []

    def slow() -> None:
        answers.append(httpx.get(server.url + "/rollout", headers=bearer(), trust_env=False,
                                 timeout=30).status_code)

    waiting = [threading.Thread(target=slow) for _ in range(6)]  # more than the 4 workers
    for thread in waiting:
        thread.start()
    try:
        assert fake.holding.wait(5)
        deadline = time.monotonic() + 5
        while sum(1 for c in fake.calls if c[0] == "rollout_status") < 4:
            assert time.monotonic() < deadline, "the workers did not all take a call"
            time.sleep(0.01)
        started = time.monotonic()
        assert http.get("/ready", timeout=2).status_code == 200
        assert http.get("/health", headers=bearer(), timeout=2).json()["pid"] == 4242
        assert time.monotonic() - started < 1.0
        assert answers == []
    finally:
        fake.hold.set()
        for thread in waiting:
            thread.join(20)
    assert answers == [200] * 6


# -- a real rollout through HTTP --------------------------------------------------------------


class ControllerControl(FakeControl):
    """The rollout part of a daemon: a real controller over a real store."""

    def __init__(self, controller: Controller) -> None:
        super().__init__()
        self.controller = controller
        self.lock = threading.Lock()  # one DuckDB connection, used from the API's threads

    def rollout_status(self) -> dict[str, Any]:
        with self.lock:
            c = self.controller
            recent = audit.history(c.store, c.rollout, limit=1)
            return status_view(c, c.assess(), audit.latest_evaluations(c.store, c.rollout),
                               recent[0].as_dict() if recent else None)

    def rollout_history(self, limit: int | None) -> list[dict[str, Any]]:
        with self.lock:
            c = self.controller
            return [r.as_dict() for r in audit.history(c.store, c.rollout, limit=limit)]

    def rollout_command(self, action: str, *, actor: str, reason: str, token: str,
                        full: bool = False, force: bool = False) -> dict[str, Any]:
        with self.lock:
            c = self.controller
            t = c.command(Action(action), actor=actor, reason=reason, force=force,
                          to_step=c.plan.last if full else None, token=token)
            return {"transition": describe(t), "state": {"step": t.after.step}}


@pytest.fixture
def controlled(tmp_path: Path) -> Iterator[tuple[Controller, DaemonClient]]:
    with Store(tmp_path / "s.duckdb") as store:
        controller = Controller(store, PLAN, rollout="triage", candidate="triage", version="1",
                                comparator="exact", now=ticking())
        controller.sync()
        with ApiServer(ControllerControl(controller), port=0, tokens=tokens()) as server:
            yield controller, DaemonClient(server.url, TOKEN)


def stored_status(controller: Controller) -> tuple[int, Status]:
    state = audit.load(controller.store, "triage")
    assert state is not None
    return state.step, state.status


def test_promote_and_rollback_through_http_change_the_stored_rollout(
        controlled: tuple[Controller, DaemonClient]) -> None:
    controller, client = controlled
    with pytest.raises(Refused, match="has not earned promotion"):
        client.rollout_command("promote", actor="dana", reason="eager")
    assert stored_status(controller) == (0, Status.PROGRESSING)

    promoted = client.rollout_command("promote", actor="dana", reason="owner approved",
                                      force=True)
    assert promoted["transition"].endswith("by dana (claimed, token ops): owner approved")
    assert stored_status(controller) == (1, Status.PROGRESSING)
    assert client.rollout_status()["percent"] == 5

    with pytest.raises(ConfigError, match="reason"):
        client.rollout_command("rollback", actor="dana")
    client.rollout_command("rollback", actor="dana", reason="replies too long")
    assert stored_status(controller) == (0, Status.ROLLED_BACK)
    with pytest.raises(Refused, match="restart it first"):
        client.rollout_command("promote", actor="dana", force=True)

    history = client.rollout_history()
    assert [(r["action"], r["actor"], r["token"]) for r in history] == [
        ("start", "controller", None), ("promote", "dana", "ops"), ("rollback", "dana", "ops")]
    assert history[-1]["reason"] == "replies too long"
    assert client.rollout_history(limit=1) == history[-1:]


# -- the client -------------------------------------------------------------------------------


def test_the_client_reports_a_refused_token_as_a_configuration_error(server: ApiServer) -> None:
    with pytest.raises(ConfigError, match="refused the token: set SHADOW_API_TOKEN"):
        DaemonClient(server.url, "wrong").rollout_status()


def test_the_client_names_the_scope_a_token_lacks(server: ApiServer) -> None:
    client = DaemonClient(server.url, SCOPED[Scope.READ])
    with pytest.raises(ConfigError) as refused:
        client.rollout_command("pause", actor="dana")
    assert str(refused.value) == (
        "the daemon's API refused: POST /rollout/pause needs the scope operate; the token "
        "'scraper' has read; set SHADOW_API_TOKEN to a token with that scope")


def test_the_client_calls_every_route(server: ApiServer, fake: FakeControl) -> None:
    client = DaemonClient(server.url, TOKEN)
    assert client.health() == {"status": "ok", "pid": 4242} | {"status": "alive"}
    assert client.readiness() == (True, {"reasons": []})
    fake.ready = False
    assert client.readiness() == (False, {"reasons": ["starting"]})
    assert client.dead_letters(2) == [DEAD_LETTER]
    assert client.event("e 1/a", candidate="triage") == EVENT
    assert fake.calls[-1] == ("event", ("e 1/a", "triage"))
    assert json.loads(client.report("json"))["events_read"] == 4242
    assert client.report("markdown") == "# Readiness report\n\nevents read 4,242\n"
    assert client.metrics().endswith("shadow_events_total 3\n")
    with pytest.raises(Refused, match="only a paused rollout resumes"):
        client.rollout_command("resume", actor="dana")


def test_the_client_says_when_nothing_listens() -> None:
    with pytest.raises(DaemonUnavailable, match="refuses connections"):
        DaemonClient(f"http://127.0.0.1:{closed_port()}", TOKEN).health()


_HELD: list[DaemonLock] = []


@pytest.fixture(autouse=True)
def _release_locks() -> Iterator[None]:
    yield
    while _HELD:
        _HELD.pop().release()


def daemon_file(store: Path, api: str, pid: int | None = None) -> None:
    """The file a daemon writes; without a ``pid`` (a live daemon: this process) it also
    holds the store's lock, as a daemon does, until the test ends."""
    DaemonFile(pid=os.getpid() if pid is None else pid, api=api, store=str(store),
               started_at=datetime.now(UTC).isoformat()).write(store)
    if pid is None:
        lock = DaemonLock(store)
        assert lock.acquire()
        _HELD.append(lock)


def test_find_daemon_needs_a_live_daemon_and_the_token(tmp_path: Path, server: ApiServer) -> None:
    store = tmp_path / "shadow.duckdb"
    assert find_daemon(store, environ={"SHADOW_API_TOKEN": TOKEN}) is None
    daemon_file(store, server.url, pid=dead_pid())
    assert find_daemon(store, environ={"SHADOW_API_TOKEN": TOKEN}) is None
    daemon_file(store, server.url)
    with pytest.raises(ConfigError, match="running daemon .* owns the store"):
        find_daemon(store, environ={})
    client = find_daemon(store, environ={"SHADOW_API_TOKEN": TOKEN})
    assert client is not None and client.rollout_status() == STATUS


# -- the CLI through a running daemon -----------------------------------------------------------

CONFIG = """
candidate:
  callable: triage:triage
  name: triage
store:
  path: shadow.duckdb
rollout:
  steps:
    - {percent: 0}
    - {percent: 10}
    - {percent: 100}
  sink: {kind: file, path: decisions.jsonl}
"""


@pytest.fixture
def daemon_dir(tmp_path: Path, server: ApiServer) -> Path:
    """A configuration whose store a daemon (the server in this process) runs."""
    (tmp_path / "shadow.yaml").write_text(CONFIG, encoding="utf-8")
    daemon_file(tmp_path / "shadow.duckdb", server.url)
    return tmp_path


def shadow(directory: Path, *args: str, token: str | None = TOKEN) -> Any:
    env = {"SHADOW_CONFIG": "shadow.yaml", "SHADOW_ACTOR": "dana"}
    return run(directory, *args, **env, **({"SHADOW_API_TOKEN": token} if token else {}))


def test_rollout_status_comes_from_the_daemon(daemon_dir: Path) -> None:
    as_json = shadow(daemon_dir, "rollout", "status", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == STATUS
    text = shadow(daemon_dir, "rollout", "status")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("rollout from-the-daemon: triage 7\n")
    assert "  … agreement" in text.stdout and "warning: labels arrive slowly" in text.stdout
    assert not (daemon_dir / "shadow.duckdb").exists()  # the file was never opened


def test_rollout_history_comes_from_the_daemon(daemon_dir: Path) -> None:
    result = shadow(daemon_dir, "rollout", "history", "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert "start" in result.stdout and "from-the-daemon start" in result.stdout


def test_promote_full_goes_to_the_daemon_after_confirmation(daemon_dir: Path,
                                                            fake: FakeControl) -> None:
    unconfirmed = shadow(daemon_dir, "rollout", "promote", "--full")
    assert_usage_error(unconfirmed, "--full", "from-the-daemon", "from 10 % straight to 100 %",
                       "--yes")
    assert [c for c in fake.calls if c[0] == "rollout_command"] == []
    result = shadow(daemon_dir, "rollout", "promote", "--full", "--yes", "--reason", "go")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "promote from the daemon by dana: go\n"
    assert fake.calls[-1] == ("rollout_command", ("promote", "dana", "go", True, False))


def test_a_refusal_from_the_daemon_exits_1(daemon_dir: Path) -> None:
    result = shadow(daemon_dir, "rollout", "resume")
    assert result.returncode == 1
    assert result.stderr == ("shadow: refused: rollout 'from-the-daemon' is progressing: only a "
                             "paused rollout resumes\n")


def test_report_and_dead_letters_come_from_the_daemon(daemon_dir: Path,
                                                      report_data: CoreReport) -> None:
    (daemon_dir / "shadow.duckdb").touch()  # a daemon's store exists; the CLI asks for one
    report = shadow(daemon_dir, "report", "--db", "shadow.duckdb", "--format", "json")
    assert report.returncode == 0, report.stderr
    assert report.stdout == render.to_json(report_data.as_dict())
    assert json.loads(report.stdout)["events_read"] == 4242
    table = shadow(daemon_dir, "report", "--db", "shadow.duckdb")
    assert table.stdout == render.to_table(report_data)
    assert "events read 4,242 = stored 0" in table.stdout
    markdown = shadow(daemon_dir, "report", "--db", "shadow.duckdb", "--format", "markdown")
    assert markdown.stdout.startswith("# Readiness report\n\nevents read 4,242\n")
    dead = shadow(daemon_dir, "dead-letters", "--db", "shadow.duckdb")
    assert dead.returncode == 0, dead.stderr
    assert "{from-the-daemon" in dead.stdout
    assert (daemon_dir / "shadow.duckdb").stat().st_size == 0  # never opened: the daemon answered


def test_rollout_commands_read_the_token_from_the_variable_the_config_names(
        daemon_dir: Path) -> None:
    config = daemon_dir / "shadow.yaml"
    config.write_text(CONFIG + "daemon:\n  api: {token_env: TRIAGE_API_TOKEN}\n",
                      encoding="utf-8")
    result = run(daemon_dir, "rollout", "status", "--format", "json",
                 SHADOW_CONFIG="shadow.yaml", TRIAGE_API_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == STATUS
    missing = shadow(daemon_dir, "rollout", "status")  # SHADOW_API_TOKEN is not the one
    assert_usage_error(missing, "set TRIAGE_API_TOKEN")


def test_a_running_daemon_without_a_token_is_a_usage_error(daemon_dir: Path) -> None:
    (daemon_dir / "shadow.duckdb").touch()  # a daemon's store exists; the CLI asks for one
    for args in (["rollout", "status"], ["dead-letters", "--db", "shadow.duckdb"]):
        result = shadow(daemon_dir, *args, token=None)
        assert_usage_error(result, "running daemon", "set SHADOW_API_TOKEN")


def test_a_wrong_token_is_a_usage_error(daemon_dir: Path) -> None:
    result = shadow(daemon_dir, "rollout", "rollback", "--reason", "x", token="wrong")
    assert_usage_error(result, "refused the token", "SHADOW_API_TOKEN")


@pytest.mark.parametrize("how", ["dead pid", "nothing listens"])
def test_without_a_live_daemon_the_cli_opens_the_file(tmp_path: Path, how: str) -> None:
    store = tmp_path / "shadow.duckdb"
    with Store(store):
        pass
    if how == "dead pid":
        daemon_file(store, "http://127.0.0.1:9", pid=dead_pid())
    else:
        daemon_file(store, f"http://127.0.0.1:{closed_port()}")
    result = shadow(tmp_path, "dead-letters", "--db", "shadow.duckdb")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no dead letters"
