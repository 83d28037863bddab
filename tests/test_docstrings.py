"""The examples in docstrings are run, so what they show stays true."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WITH_EXAMPLES = sorted(
    path.relative_to(ROOT)
    for package in ("shadow", "connectors", "rollout")
    for path in (ROOT / package).rglob("*.py")
    if ">>>" in path.read_text(encoding="utf-8")
)


def test_there_are_examples_to_run() -> None:
    assert len(WITH_EXAMPLES) >= 5


@pytest.mark.parametrize("path", WITH_EXAMPLES, ids=str)
def test_docstring_examples_hold(path: Path) -> None:
    module = importlib.import_module(".".join(path.with_suffix("").parts))
    failed, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert tried > 0
    assert failed == 0, f"{failed} of {tried} examples in {path} fail (see the output above)"
