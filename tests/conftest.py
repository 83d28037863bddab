"""Shared fixtures: export files written line by line, and the report of a store file."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from shadow.reports.summary import build_report
from shadow.store.database import Store


@pytest.fixture
def write_lines(tmp_path: Path) -> Callable[[str, Iterable[str]], Path]:
    """Write ``lines`` (without newlines) to ``tmp_path / name``; returns the resolved path."""

    def write(name: str, lines: Iterable[str]) -> Path:
        path = (tmp_path / name).resolve()
        path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
        return path

    return write


@pytest.fixture
def read_report() -> Callable[[Path], dict[str, Any]]:
    """The JSON report of a store file, opened read-only as the CLI would."""

    def read(db: Path) -> dict[str, Any]:
        with Store(db, read_only=True) as store:
            return build_report(store)

    return read


pytest_plugins = ["tests.kafka", "tests.imap_server"]
