"""Progress of long replays: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)


class PlainProgress:
    """One line per source every ``every`` seconds, and one when it ends."""

    def __init__(self, stream: TextIO, every: float = 5.0) -> None:
        self._stream = stream
        self._every = every
        self._last: dict[str, float] = {}

    def __call__(self, source: str, records: int, fraction: float | None) -> None:
        now = time.monotonic()
        done = fraction is not None and fraction >= 1.0
        if not done and now - self._last.get(source, 0.0) < self._every:
            return
        self._last[source] = now
        share = "" if fraction is None else f" ({100 * fraction:.0f} %)"
        print(f"{source}: {records:,} records read{share}", file=self._stream, flush=True)

    def close(self) -> None:
        pass


class BarProgress:
    """A rich progress bar per source: the share of the file read, and records so far."""

    def __init__(self, stream: TextIO) -> None:
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("records {task.fields[records]:,}"), TimeRemainingColumn(),
            console=Console(file=stream), transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._bar.start()

    def __call__(self, source: str, records: int, fraction: float | None) -> None:
        task = self._tasks.get(source)
        if task is None:
            task = self._tasks[source] = self._bar.add_task(source, total=1000, records=0)
        self._bar.update(task, completed=int(1000 * (fraction or 0.0)), records=records)

    def close(self) -> None:
        self._bar.stop()


def progress_reporter(stream: TextIO) -> PlainProgress | BarProgress:
    return BarProgress(stream) if stream.isatty() else PlainProgress(stream)
