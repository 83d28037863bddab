"""A daemon that cannot start says everything it misses at once, and leaves no file behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from shadow.config.file import load_config
from shadow.pipeline.readiness import remembered
from shadow.service.daemon import startup_problems
from shadow.store.database import Store
from tests.daemon_process import TOKEN, ready_api, start_daemon, stop

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("ZENDESK_TICKETS_WEBHOOK_SECRET", "ZENDESK_SOLUTIONS_WEBHOOK_SECRET",
           "HUBSPOT_EVENTS_APP_SECRET", "HUBSPOT_OUTCOMES_APP_SECRET", "SHADOW_READ_TOKEN",
           "QUICKSTART_WEBHOOK_SECRET")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHADOW_") and k not in SECRETS}
    env.update(extra)
    return env


def shadow_run(directory: Path, *args: str, env: dict[str, str]
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shadow", "run", *args], cwd=directory,
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def files_under(directory: Path) -> set[Path]:
    return {p.relative_to(directory) for p in directory.rglob("*")}


def copied(directory: Path, relative: str) -> Path:
    """The repository's ``relative`` file, copied to the same place under ``directory``."""
    target = directory / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / relative, target)
    return target


@pytest.fixture
def free_port() -> Iterator[socket.socket]:
    """A port held open by the test, so that whoever else tries to listen on it fails."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken


@pytest.mark.parametrize("relative", ["configs/zendesk-webhooks.yaml",
                                      "configs/hubspot-webhooks.yaml"])
def test_a_webhook_example_without_its_setup_names_every_missing_thing_at_once(
    tmp_path: Path, relative: str
) -> None:
    config = copied(tmp_path, relative)
    before = files_under(tmp_path)
    done = shadow_run(tmp_path, "--config", str(config), "--db", "missing/s.duckdb",
                      env=clean_env())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    header, *problems = done.stderr.splitlines()
    assert header == f"shadow: error: the daemon cannot start, {len(problems)} problems:"
    keys = [line.strip().split(":")[0] for line in problems]
    assert keys == ["store.path", "daemon.api.token_env", "sources.events.0.secret_env",
                    "sources.outcomes.0.secret_env"]
    assert files_under(tmp_path) == before


def test_a_config_without_store_token_or_candidate_says_all_three(tmp_path: Path) -> None:
    config = tmp_path / "shadow.yaml"
    config.write_text("sources: {events: [{kind: file, path: events.jsonl}]}\n",
                      encoding="utf-8")
    done = shadow_run(tmp_path, "--config", "shadow.yaml", env=clean_env())
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[1:] == [
        "  store.path: the daemon needs a store; set store.path in the config, or give "
        "--db PATH (or set SHADOW_DB)",
        "  daemon.api.token_env: set the environment variable SHADOW_API_TOKEN to the bearer "
        "token the control API requires",
        "  candidate: the daemon needs a candidate to run",
    ]
    assert files_under(tmp_path) == {Path("shadow.yaml")}


def test_one_missing_thing_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "shadow.yaml"
    config.write_text("candidate: {callable: shadow.demo.candidate:classify}\n"
                      "store: {path: s.duckdb}\n"
                      "sources: {events: [{kind: file, path: events.jsonl}]}\n",
                      encoding="utf-8")
    done = shadow_run(tmp_path, "--config", "shadow.yaml", env=clean_env())
    assert done.returncode == 2
    assert done.stderr == ("shadow: error: daemon.api.token_env: set the environment variable "
                           "SHADOW_API_TOKEN to the bearer token the control API requires\n")
    assert files_under(tmp_path) == {Path("shadow.yaml")}


def test_a_candidate_that_cannot_be_loaded_is_named_with_the_rest(tmp_path: Path) -> None:
    config = tmp_path / "shadow.yaml"
    config.write_text("candidates: [{callable: shadow.demo.candidate:classify},\n"
                      "             {callable: no_such_module_here:predict}]\n"
                      "sources: {events: [{kind: file, path: events.jsonl}]}\n",
                      encoding="utf-8")
    problems = startup_problems(load_config(config), store_path=tmp_path / "s.duckdb",
                                base_dir=tmp_path, environ={"SHADOW_API_TOKEN": TOKEN})
    assert len(problems) == 1
    assert problems[0].startswith("candidates.1: candidate no_such_module_here:predict: "
                                  "cannot import module 'no_such_module_here'")


def test_a_secret_the_scheme_cannot_use_is_named(tmp_path: Path) -> None:
    config = tmp_path / "shadow.yaml"
    config.write_text("candidate: {callable: shadow.demo.candidate:classify}\n"
                      "sources: {events: [{kind: webhook, name: t, path: /t, scheme: standard,"
                      " secret_env: HOOK}]}\n", encoding="utf-8")
    problems = startup_problems(load_config(config), store_path=tmp_path / "s.duckdb",
                                base_dir=tmp_path,
                                environ={"SHADOW_API_TOKEN": TOKEN, "HOOK": "whsec_!!"})
    assert len(problems) == 1
    assert problems[0].startswith("sources.events.0.secret_env: HOOK does not hold a standard "
                                  "secret: ")


def test_the_deployed_config_outside_its_container_names_its_store_folder_and_token(
    tmp_path: Path
) -> None:
    config = copied(tmp_path, "deploy/shadow.yaml")
    before = files_under(tmp_path)
    done = shadow_run(tmp_path, "--config", str(config), env=clean_env())
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert [line.strip().split(":")[0] for line in done.stderr.splitlines()[1:]] == [
        "store.path", "daemon.api.tokens.0.env"]
    assert files_under(tmp_path) == before


def test_a_start_refused_after_the_store_was_made_removes_what_it_made(
    tmp_path: Path, free_port: socket.socket
) -> None:
    port = free_port.getsockname()[1]
    config = tmp_path / "shadow.yaml"
    config.write_text("candidate: {callable: shadow.demo.candidate:classify}\n"
                      "store: {path: s.duckdb}\n"
                      "sources: {events: [{kind: file, path: events.jsonl}]}\n"
                      f"daemon: {{api: {{port: {port}}}}}\n", encoding="utf-8")
    (tmp_path / "events.jsonl").write_text("", encoding="utf-8")
    before = files_under(tmp_path)
    done = shadow_run(tmp_path, "--config", "shadow.yaml",
                      env=clean_env(SHADOW_API_TOKEN=TOKEN))
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert files_under(tmp_path) == before


def test_a_refused_start_leaves_an_existing_store_alone(
    tmp_path: Path, free_port: socket.socket
) -> None:
    with Store(tmp_path / "s.duckdb"):
        pass
    port = free_port.getsockname()[1]
    config = tmp_path / "shadow.yaml"
    config.write_text("candidate: {callable: shadow.demo.candidate:classify}\n"
                      "store: {path: s.duckdb}\n"
                      "sources: {events: [{kind: file, path: events.jsonl}]}\n"
                      f"daemon: {{api: {{port: {port}}}}}\n", encoding="utf-8")
    (tmp_path / "events.jsonl").write_text("", encoding="utf-8")
    done = shadow_run(tmp_path, "--config", "shadow.yaml",
                      env=clean_env(SHADOW_API_TOKEN=TOKEN))
    assert done.returncode == 2, done.stderr
    assert (tmp_path / "s.duckdb").exists()
    assert not (tmp_path / "s.duckdb.daemon.lock").exists()


@pytest.mark.parametrize(("relative", "secrets"), [
    ("configs/zendesk-webhooks.yaml",
     ("ZENDESK_TICKETS_WEBHOOK_SECRET", "ZENDESK_SOLUTIONS_WEBHOOK_SECRET")),
    ("configs/hubspot-webhooks.yaml",
     ("HUBSPOT_EVENTS_APP_SECRET", "HUBSPOT_OUTCOMES_APP_SECRET")),
])
def test_a_webhook_example_starts_as_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str, secrets: tuple[str, ...]
) -> None:
    """With its secrets and a token set, as written, except for ports the system chooses
    (tests run beside each other)."""
    raw = yaml.safe_load((ROOT / relative).read_text(encoding="utf-8"))
    raw["daemon"]["webhooks"]["port"] = 0
    raw["daemon"]["api"] = {"port": 0}
    config = tmp_path / "configs" / Path(relative).name
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    for name in secrets:
        monkeypatch.setenv(name, f"secret of {name}")
    daemon = start_daemon(config, "daemon.log")
    store = config.parent / raw["store"]["path"]
    try:
        ready_api(store, process=daemon)
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    # The settings it judges readiness by are kept with the store, for reports without it.
    with Store(store, read_only=True) as opened:
        kept = remembered(opened)
    assert kept is not None
    assert kept.comparator.prediction_path == load_config(config).comparator.prediction_path


def test_the_deployed_config_starts_as_the_compose_file_runs_it(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """deploy/shadow.yaml as docker-compose.yml mounts it, with this test's broker for the
    compose file's, its volume and mounts under the test's directory, and ports chosen by
    the system (tests run beside each other)."""
    data, tokens = tmp_path / "data", tmp_path / "api-tokens"
    data.mkdir()
    shutil.copy(ROOT / "deploy" / "api-tokens", tokens)
    tokens.chmod(0o600)
    text = ((ROOT / "deploy" / "shadow.yaml").read_text(encoding="utf-8")
            .replace("kafka:19092", kafka_bootstrap).replace("/data/", f"{data}/")
            .replace("/etc/shadow/api-tokens", str(tokens)))
    raw = yaml.safe_load(text)
    raw["daemon"]["api"]["port"] = raw["daemon"]["webhooks"]["port"] = 0
    config = tmp_path / "shadow.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        # start_daemon keeps no SHADOW_ variable but the CLI's token; this one needs its own.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "shadow", "run", "--config", str(config)], cwd=tmp_path,
            env=clean_env(SHADOW_READ_TOKEN="the scraper's token"), stdout=log_file,
            stderr=log_file, text=True)
    daemon.log = log_path  # type: ignore[attr-defined]
    try:
        ready_api(data / "shadow.duckdb", timeout_s=120, process=daemon)
    finally:
        code, log = stop(daemon)
    assert code == 0, log


def test_every_token_variable_that_is_not_set_is_named(tmp_path: Path) -> None:
    config = tmp_path / "shadow.yaml"
    config.write_text("candidate: {callable: shadow.demo.candidate:classify}\n"
                      "sources: {events: [{kind: file, path: events.jsonl}]}\n"
                      "daemon: {api: {tokens: [{name: scraper, env: READ_TOKEN, scope: read},\n"
                      "                        {name: ana, env: ANA_TOKEN, scope: operate}]}}\n",
                      encoding="utf-8")
    problems = startup_problems(load_config(config), store_path=tmp_path / "s.duckdb",
                                base_dir=tmp_path, environ={"ANA_TOKEN": " "})
    assert problems == [
        "daemon.api.tokens.0.env: set the environment variable READ_TOKEN to the token of "
        "'scraper'",
        "daemon.api.tokens.1.env: set the environment variable ANA_TOKEN to the token of 'ana'"]
