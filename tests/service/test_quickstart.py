"""The README's daemon quick start, run as written from a clean directory.

The shell block is read from README.md, so the README and this test cannot drift. The
directory holds what a checkout and the README's install give: ``configs/`` with the
quick start's configuration and samples, and ``.venv`` (the one running the tests).
Only the two ports are changed, to free ones, in the block and in the configuration
alike: other tests run beside this one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADING = "### Quick start: a daemon on your machine"
API_PORT, WEBHOOK_PORT = 8787, 8788


def quick_start_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(HEADING, 1)[1]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None, "no shell block under the quick start's heading"
    return found.group(1)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def with_ports(text: str, api: int, webhooks: int) -> str:
    return (text.replace(f"port: {API_PORT}", f"port: {api}")
            .replace(f"127.0.0.1:{API_PORT}", f"127.0.0.1:{api}")
            .replace(f"port: {WEBHOOK_PORT}", f"port: {webhooks}"))


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A clean directory with what the quick start needs from the repository."""
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs" / "samples", configs / "samples")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    return tmp_path


def test_the_readme_quick_start_runs_as_written(checkout: Path) -> None:
    api, webhooks = free_ports(2)
    config = (ROOT / "configs" / "quickstart-daemon.yaml").read_text(encoding="utf-8")
    assert f"port: {API_PORT}" in config and f"port: {WEBHOOK_PORT}" in config
    (checkout / "configs" / "quickstart-daemon.yaml").write_text(
        with_ports(config, api, webhooks), encoding="utf-8")
    block = quick_start_block()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHADOW_") and k != "QUICKSTART_WEBHOOK_SECRET"}
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", with_ports(block, api, webhooks)],
                             cwd=checkout, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = shell.communicate(timeout=180)
    finally:
        # Whatever happened, nothing the block started outlives the test.
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log = (checkout / "quickstart.log").read_text(encoding="utf-8")
    assert shell.returncode == 0, f"{out}\n{err}\n{log[-3000:]}"
    assert '{"status":"ok"}' in out
    assert out.count('200 {"status":"stored","records":1}') == 2, out
    assert re.search(r"events in store\s+│\s+1 │", out), out
    assert re.search(r"compared with an outcome\s+│\s+1 │", out), out
    assert "step 0 of 4" in out, out
    assert '"event": "daemon stopped"' in log
    assert (checkout / "configs" / "quickstart.duckdb").exists()
