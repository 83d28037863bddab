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


def test_the_compose_workers_variant_runs_a_recorder_and_workers_on_one_configuration(
) -> None:
    from shadow.service.daemon import recorder_problems
    from shadow.service.worker import worker_problems

    override = yaml.safe_load((ROOT / "docker-compose.workers.yml").read_text(encoding="utf-8"))
    recorder, worker = override["services"]["shadow"], override["services"]["worker"]
    assert recorder["command"][:5] == ["run", "--role", "recorder", "--config",
                                       "/etc/shadow/shadow.yaml"]
    assert worker["command"][:3] == ["worker", "--config", "/etc/shadow/shadow.yaml"]
    mounts = {v.split(":")[1]: v.split(":")[0] for s in (recorder, worker)
              for v in s["volumes"] if v.startswith("./")}
    config = load_config(ROOT / mounts["/etc/shadow/shadow.yaml"])
    assert recorder_problems(config) == [] and worker_problems(config) == []
    assert config.workers is not None and config.rollout is not None
    assert config.rollout.state_topic is not None
    topics = override["services"]["topics"]["command"][0]
    (events,) = config.sources.events
    assert events.kind == "kafka"
    for topic in (config.workers.topic, *events.topics):
        assert topic in topics
    assert f"--topic {config.rollout.state_topic.topic} " in topics
    assert "cleanup.policy=compact" in topics
    assert f"--partitions {config.workers.partitions}" in topics
    # Everything but the recorder's additions is the single-process configuration.
    single = load_config(ROOT / "deploy" / "shadow.yaml")
    assert config.model_copy(update={"workers": None, "rollout": config.rollout.model_copy(
        update={"state_topic": None})}) == single
