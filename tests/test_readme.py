"""The configuration examples the README shows are valid configurations, as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shadow.config.file import parse_config

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_configuration_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("block", BLOCKS, ids=[b.split(":")[0] for b in BLOCKS])
def test_each_configuration_example_validates(block: str) -> None:
    """A section shown on its own is checked inside the smallest configuration around it."""
    shown: dict[str, Any] = yaml.safe_load(block)
    base: dict[str, Any] = {"version": 1}
    if "candidate" not in shown and "candidates" not in shown:
        base["candidate"] = {"callable": "app.triage:predict"}
    parse_config({**base, **shown}, origin="README.md")
