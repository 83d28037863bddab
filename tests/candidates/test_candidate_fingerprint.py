"""Fingerprints: a candidate without a version is versioned by what determines its answers.

The expected fingerprints are computed here with the standard library's json
and hashlib from the fields the fingerprint is documented to cover.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from rollout import audit
from rollout.controller import Controller
from rollout.state import Action, Status
from shadow.candidates import Candidate, build_candidate
from shadow.candidates.fingerprint import NOT_BEHAVIOUR, fingerprint, source_of
from shadow.config.candidates import (
    CallableCandidateSpec,
    CandidateSpec,
    ChatCandidateSpec,
    HttpCandidateSpec,
)
from shadow.config.rollout import RolloutSpec
from shadow.store.database import Store
from tests.clock import SteppingClock

ROOT = Path(__file__).resolve().parents[2]
SPECS: TypeAdapter[CandidateSpec] = TypeAdapter(CandidateSpec)

CHAT: dict[str, Any] = {
    "kind": "chat", "name": "triage", "base_url": "https://llm.internal/v1",
    "model": "triage-small", "system": "File the ticket.", "user": "{{ payload.subject }}",
    "json_schema": {"type": "object", "properties": {"category": {"type": "string"}}},
    "temperature": 0.2, "headers": {"X-Team": "support", "Authorization": "Bearer ${TOKEN}"},
}
HTTP: dict[str, Any] = {
    "kind": "http", "name": "triage", "url": "https://triage.internal/predict",
    "body": {"text": "{{ payload.subject }}"}, "output_path": "result",
}


def expected(fields: dict[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "fp-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def built(settings: dict[str, Any], **changes: Any) -> Candidate:
    return build_candidate(SPECS.validate_python({**settings, **changes}))


def version_of(settings: dict[str, Any], **changes: Any) -> str | None:
    return built(settings, **changes).version


def case_id(value: dict[str, Any]) -> str:
    return str(value["kind"]) if "kind" in value else "+".join(value)


# -- what goes in ---------------------------------------------------------------------


def test_a_chat_candidate_without_a_version_gets_the_fingerprint_of_its_behaviour() -> None:
    want = expected({
        "kind": "chat", "base_url": "https://llm.internal/v1", "model": "triage-small",
        "system": "File the ticket.", "user": "{{ payload.subject }}",
        "json_schema": CHAT["json_schema"], "temperature": 0.2,
        "headers": {"x-team": "support"},
    })

    assert version_of(CHAT) == want


def test_an_http_candidate_without_a_version_gets_the_fingerprint_of_its_behaviour() -> None:
    want = expected({"kind": "http", "url": "https://triage.internal/predict",
                     "body": {"text": "{{ payload.subject }}"}, "output_path": "result"})

    assert version_of(HTTP) == want


@pytest.mark.parametrize(("settings", "change"), [
    (CHAT, {"model": "triage-large"}),
    (CHAT, {"base_url": "https://other.internal/v1"}),
    (CHAT, {"system": "File the ticket. Be brief."}),
    (CHAT, {"user": "{{ payload.subject }} {{ payload.body }}"}),
    (CHAT, {"json_schema": {"type": "object", "required": ["category"]}}),
    (CHAT, {"temperature": 0.7}),
    (CHAT, {"max_tokens": 50}),
    (CHAT, {"output": "text"}),
    (CHAT, {"headers": {"X-Team": "sales", "Authorization": "Bearer ${TOKEN}"}}),
    (CHAT, {"abstain_below": 0.6}),
    (CHAT, {"checks": [{"kind": "pii"}]}),
    (HTTP, {"url": "https://triage.internal/v2/predict"}),
    (HTTP, {"body": {"text": "{{ payload.body }}"}}),
    (HTTP, {"output_path": "result.label"}),
    (HTTP, {"confidence_path": "result.p"}),
], ids=case_id)
def test_a_change_in_behaviour_changes_the_fingerprint(
    settings: dict[str, Any], change: dict[str, Any]
) -> None:
    assert version_of(settings, **change) != version_of(settings)


@pytest.mark.parametrize(("settings", "change"), [
    (CHAT, {"name": "triage-renamed"}),
    (CHAT, {"timeout_s": 60.0}),
    (CHAT, {"retry": {"max_attempts": 7}}),
    (CHAT, {"breaker": {"failures": 3}}),
    (CHAT, {"concurrency": 2}),
    (CHAT, {"prices": {"prompt_per_1k": 0.1, "completion_per_1k": 0.2}}),
    (CHAT, {"api_key_env": "OTHER_KEY"}),
    (CHAT, {"headers": {"X-Team": "support", "Authorization": "Bearer ${OTHER_TOKEN}"}}),
    (CHAT, {"headers": {"x-team": "support", "Authorization": "Bearer ${TOKEN}"}}),
    (CHAT, {"output": "json"}),
    (HTTP, {"timeout_s": 1.5}),
    (HTTP, {"retry": {"max_attempts": 1}}),
    (HTTP, {"name": None}),
], ids=case_id)
def test_what_does_not_change_the_answers_leaves_the_fingerprint(
    settings: dict[str, Any], change: dict[str, Any]
) -> None:
    assert version_of(settings, **change) == version_of(settings)


def test_secret_values_never_reach_the_fingerprint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN", "first-secret")
    first = version_of(CHAT)
    monkeypatch.setenv("TOKEN", "second-secret")

    assert version_of(CHAT) == first
    assert version_of(CHAT) == version_of(CHAT, headers={"X-Team": "support"})


def test_every_field_left_out_is_a_field_of_a_candidate_spec() -> None:
    fields = {name for model in (CallableCandidateSpec, HttpCandidateSpec, ChatCandidateSpec)
              for name in model.model_fields}

    assert NOT_BEHAVIOUR <= fields


def test_the_same_spec_gives_the_same_fingerprint_in_another_process(tmp_path: Path) -> None:
    module = write_module(tmp_path / "here", "return 'billing'")
    script = (
        "import json, sys\n"
        "from pydantic import TypeAdapter\n"
        "from shadow.config.candidates import CandidateSpec\n"
        "from shadow.candidates import build_candidate\n"
        "specs = TypeAdapter(CandidateSpec)\n"
        "for raw in json.loads(sys.argv[1]):\n"
        "    print(build_candidate(specs.validate_python(raw)).version)\n"
    )
    callable_spec = {"callable": f"{module}:classify"}
    env = {**os.environ, "PYTHONHASHSEED": "12345",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "here"), str(ROOT)])}

    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps([CHAT, HTTP, callable_spec])],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)

    with imported(tmp_path / "here", module):
        here = [version_of(CHAT), version_of(HTTP), version_of(callable_spec)]
    assert done.stdout.split() == here


# -- callables ------------------------------------------------------------------------

MODULE = "fingerprinted_triage"


def write_module(folder: Path, body: str, *, extra: str = "") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{MODULE}.py").write_text(
        f"{extra}def classify(event):\n    {body}\n", encoding="utf-8")
    return MODULE


@pytest.fixture(autouse=True)
def forget_module() -> Iterator[None]:
    yield
    sys.modules.pop(MODULE, None)


class imported:
    """``folder`` importable, and the module imported from it afresh, for the block."""

    def __init__(self, folder: Path, module: str) -> None:
        self.folder, self.module = str(folder), module

    def __enter__(self) -> None:
        sys.modules.pop(self.module, None)
        sys.path.insert(0, self.folder)

    def __exit__(self, *exc_info: object) -> None:
        sys.path.remove(self.folder)
        sys.modules.pop(self.module, None)


def callable_version(folder: Path, body: str, *, extra: str = "",
                     **settings: Any) -> str | None:
    module = write_module(folder, body, extra=extra)
    with imported(folder, module):
        return version_of({"callable": f"{module}:classify", **settings})


def test_a_callable_is_fingerprinted_by_its_reference_and_source(tmp_path: Path) -> None:
    source = "def classify(event):\n    return 'billing'\n"
    want = expected({"kind": "callable", "callable": f"{MODULE}:classify",
                     "source_sha256": hashlib.sha256(source.encode()).hexdigest()})

    assert callable_version(tmp_path / "a", "return 'billing'") == want


def test_a_callable_whose_source_changes_gets_another_fingerprint(tmp_path: Path) -> None:
    first = callable_version(tmp_path / "a", "return 'billing'")
    second = callable_version(tmp_path / "b", "return 'login'")
    again = callable_version(tmp_path / "c", "return 'billing'")

    assert first is not None and first.startswith("fp-")
    assert first != second
    assert again == first


def test_a_callable_batch_size_leaves_the_fingerprint(tmp_path: Path) -> None:
    first = callable_version(tmp_path / "a", "return 'billing'")

    assert callable_version(tmp_path / "b", "return 'billing'", batch_size=8) == first


def test_a_module_version_wins_over_the_fingerprint(tmp_path: Path) -> None:
    version = callable_version(tmp_path / "a", "return 'billing'", extra="__version__ = '3.1'\n")

    assert version == "3.1"


def test_a_callable_without_source_is_fingerprinted_by_its_reference() -> None:
    spec = CallableCandidateSpec(callable="builtins:len")

    assert source_of(len) is None
    assert fingerprint(spec, source=source_of(len)) == expected(
        {"kind": "callable", "callable": "builtins:len"})


# -- an explicit version --------------------------------------------------------------


@pytest.mark.parametrize(("settings", "change"), [
    (CHAT, {"model": "triage-large"}),
    (HTTP, {"url": "https://triage.internal/v2/predict"}),
], ids=case_id)
def test_an_explicit_version_wins(settings: dict[str, Any], change: dict[str, Any]) -> None:
    assert version_of(settings, version="2024-06") == "2024-06"
    assert version_of(settings, version="2024-06", **change) == "2024-06"


def test_an_explicit_version_wins_for_a_callable(tmp_path: Path) -> None:
    assert callable_version(tmp_path / "a", "return 1", version="9") == "9"


# -- through the rollout controller ---------------------------------------------------

T0 = datetime(2026, 1, 5, tzinfo=UTC)
PLAN = RolloutSpec.model_validate({
    "steps": [{"percent": 0}, {"percent": 5}, {"percent": 100}],
    "sink": {"kind": "file", "path": "d.jsonl"},
})


def controller(store: Store, candidate: Candidate, clock: SteppingClock) -> Controller:
    return Controller(store, PLAN, rollout="triage", candidate=candidate.name,
                      version=candidate.version, comparator="exact", now=clock)


@pytest.fixture
def promoted(tmp_path: Path) -> Iterator[tuple[Store, SteppingClock, Candidate]]:
    """A rollout of the CHAT candidate, promoted by a person to 5 %."""
    clock = SteppingClock(T0, timedelta(minutes=1))
    with Store(tmp_path / "rollout.duckdb") as store:
        first = built(CHAT)
        c = controller(store, first, clock)
        c.sync()
        c.command(Action.PROMOTE, actor="dana", reason="looks good", force=True)
        assert c.state.step == 1
        yield store, clock, first


def test_a_new_model_behind_the_same_name_restarts_the_rollout_from_shadow(
    promoted: tuple[Store, SteppingClock, Candidate],
) -> None:
    store, clock, first = promoted
    second = built(CHAT, model="triage-large")
    assert second.name == first.name and second.version != first.version

    state = controller(store, second, clock).sync()

    assert (state.step, state.percent, state.status, state.version) == (
        0, 0.0, Status.PROGRESSING, second.version)
    last = audit.history(store, "triage")[-1]
    assert (last.action, last.from_step, last.to_step) == (Action.RESTART, 1, 0)
    assert f"{first.version} to triage {second.version}" in last.reason


def test_an_unchanged_behaviour_keeps_the_rollout_where_it_is(
    promoted: tuple[Store, SteppingClock, Candidate],
) -> None:
    store, clock, first = promoted
    before = audit.history(store, "triage")

    state = controller(store, built(CHAT, timeout_s=30.0), clock).sync()

    assert (state.step, state.version) == (1, first.version)
    assert audit.history(store, "triage") == before
