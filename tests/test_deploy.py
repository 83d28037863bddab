"""The deployment files stay in step with the code: the configuration they run validates."""

from __future__ import annotations

from pathlib import Path

import yaml

from shadow.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_compose_daemon_runs_a_configuration_that_validates() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["shadow"]
    assert service["command"][:3] == ["run", "--config", "/etc/shadow/shadow.yaml"]
    (mount,) = [v for v in service["volumes"] if v.endswith(":/etc/shadow/shadow.yaml:ro")]
    config = load_config(ROOT / mount.split(":")[0])
    assert config.rollout is not None and config.rollout.sink is not None
    topics = compose["services"]["topics"]["command"][0]
    for spec in [*config.sources.events, *config.sources.outcomes]:
        assert spec.kind == "kafka"
        assert all(topic in topics for topic in spec.topics)
    assert config.rollout.sink.topic in topics


def test_the_systemd_unit_runs_the_daemon_and_stops_it_with_sigterm() -> None:
    unit = (ROOT / "deploy" / "shadow.service").read_text(encoding="utf-8")
    assert "ExecStart=/opt/shadow/.venv/bin/shadow run --config /etc/shadow/shadow.yaml" in unit
    assert "KillSignal=SIGTERM" in unit
