"""The deployment files stay in step with the code: the configuration they run validates."""

from __future__ import annotations

from pathlib import Path

import yaml

from shadow.config.daemon import Scope
from shadow.config.file import load_config
from shadow.service.api_tokens import read_tokens_file

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


def test_the_deployed_daemon_gives_its_metrics_scraper_a_read_token_and_no_more() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["shadow"]
    api = load_config(ROOT / "deploy" / "shadow.yaml").daemon.api
    assert not api.single_token
    (scraper,) = api.tokens
    assert (scraper.name, scraper.granted) == ("prometheus", Scope.READ)
    # The only secret in the daemon's environment reads; people's tokens are hashes in a file.
    assert scraper.env in service["environment"]
    assert "SHADOW_API_TOKEN" not in service["environment"]
    (mount,) = [v for v in service["volumes"] if v.endswith(f":{api.tokens_file}:ro")]
    assert read_tokens_file(ROOT / mount.split(":")[0]) == []  # shipped without a token
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text(encoding="utf-8")
    (job,) = yaml.safe_load(prometheus)["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and "credentials_file" in job["authorization"]
    assert f"env: {scraper.env}, scope: read" in prometheus


def test_the_systemd_unit_keeps_what_the_daemon_writes_to_its_user() -> None:
    unit = (ROOT / "deploy" / "shadow.service").read_text(encoding="utf-8")
    assert "UMask=0077" in unit and "NoNewPrivileges=true" in unit
