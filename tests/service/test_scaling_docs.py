"""docs/scaling.md: its configuration runs as a recorder and as a worker, its commands parse,
and its worked example of the capacity model adds up."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

from shadow.cli.main import _parser
from shadow.config.file import load_config
from shadow.service.daemon import recorder_problems
from shadow.service.worker import worker_problems

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
TEXT = DOC.read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TEXT, re.S)


def test_the_configuration_is_one_a_recorder_and_its_workers_can_run(tmp_path: Path) -> None:
    (block,) = blocks("yaml")
    path = tmp_path / "shadow.yaml"
    path.write_text(block, encoding="utf-8")
    config = load_config(path)
    assert worker_problems(config) == []
    assert recorder_problems(config) == []
    assert config.workers is not None and config.workers.partitions == 12
    assert config.rollout is not None and config.rollout.state_topic is not None
    assert config.rollout.state_topic.max_age.total_seconds() == 2.0
    (candidate,) = config.all_candidates()
    assert candidate.kind == "http" and candidate.concurrency == 16


def test_the_commands_parse() -> None:
    (block,) = blocks("sh")
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert [c.split()[:2] for c in commands] == [["shadow", "run"], ["shadow", "worker"],
                                                 ["shadow", "status"]]
    for command in commands:
        args = _parser().parse_args(shlex.split(command)[1:])
        assert args.config == Path("shadow.yaml")


def test_the_worked_example_adds_up() -> None:
    """2,000 events/s at 1.5 s per call, 64 in flight, 85 % of the ideal."""
    per_worker = 0.85 * 64 / 1.5
    assert round(per_worker) == 36
    workers = math.ceil(2000 / round(per_worker))
    assert workers == 56
    assert "≈ 36 events/s" in TEXT and f"ceil(2,000 ÷ 36) = {workers}" in TEXT
