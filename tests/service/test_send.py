"""``shadow send``: a file signed as the source's vendor would, answered by a real daemon."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.daemon_process import get, ready_api, start_daemon, stop

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "configs" / "samples" / "hubspot-record-updated.json"
SECRETS = {"HUBSPOT_EVENTS_APP_SECRET": "events app secret",
           "HUBSPOT_OUTCOMES_APP_SECRET": "outcomes app secret"}


def send(directory: Path, *args: str, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("SHADOW_") and k not in SECRETS}
    return subprocess.run([sys.executable, "-m", "shadow", "send", *args], cwd=directory,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, check=False)


def hubspot_config(directory: Path) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "hubspot-webhooks.yaml").read_text(encoding="utf-8"))
    raw["daemon"]["webhooks"]["port"] = 0
    raw["daemon"]["api"] = {"port": 0}
    config = directory / "hubspot.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    shutil.copy(SAMPLE, directory / "change.json")
    return config


def test_a_hubspot_signed_file_is_stored_and_a_resend_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = hubspot_config(tmp_path)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    daemon = start_daemon(config, "daemon.log")
    try:
        api = ready_api(tmp_path / "hubspot.duckdb", process=daemon)
        hooks = json.loads(get(api + "/ready")[1])["checks"]["webhooks"]
        args = ("--config", str(config), "--source", "hubspot-lifecycle", "--url", hooks,
                "change.json")
        first = send(tmp_path, *args, env=SECRETS)
        again = send(tmp_path, *args, env=SECRETS)
        wrong = send(tmp_path, *args, env={**SECRETS, "HUBSPOT_EVENTS_APP_SECRET": "not it"})
    finally:
        code, log = stop(daemon)
    assert code == 0, log
    assert (first.returncode, first.stdout.split()[0]) == (0, "200"), first.stderr
    assert '"stored"' in first.stdout
    assert (again.returncode, again.stdout.split()[0]) == (0, "200"), again.stderr
    assert "duplicate" in again.stdout, again.stdout
    assert (wrong.returncode, wrong.stdout.split()[0]) == (1, "401")


def test_an_unknown_source_is_named_with_the_ones_there_are(tmp_path: Path) -> None:
    config = hubspot_config(tmp_path)
    done = send(tmp_path, "--config", str(config), "--source", "tickets", "change.json")
    assert done.returncode == 2
    assert done.stderr == ("shadow: error: --source tickets: no webhook source of that name; "
                           "expected one of ['hubspot-lifecycle', 'hubspot-lead-status']\n")


def test_a_missing_secret_names_its_variable(tmp_path: Path) -> None:
    config = hubspot_config(tmp_path)
    done = send(tmp_path, "--config", str(config), "--source", "hubspot-lead-status",
                "change.json")
    assert done.returncode == 2
    assert "set the environment variable HUBSPOT_OUTCOMES_APP_SECRET" in done.stderr


def test_no_daemon_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = hubspot_config(tmp_path)
    done = send(tmp_path, "--config", str(config), "--source", "hubspot-lifecycle",
                "--url", "http://127.0.0.1:9", "change.json", env=SECRETS)
    assert done.returncode == 1
    assert done.stderr.startswith("shadow: failed: no answer from http://127.0.0.1:9/hooks/")
    assert len(done.stderr.splitlines()) == 1
