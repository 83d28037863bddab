"""Clocks for tests: one whose time moves by a fixed step at every look, only when the code
looks; one of monotonic seconds that moves only when the test moves it."""

from __future__ import annotations

from datetime import datetime, timedelta


class SteppingClock:
    def __init__(self, start: datetime, step: timedelta) -> None:
        self.now, self.step = start, step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


class ManualClock:
    """Monotonic seconds, moved by the test: ``clock.t += 5``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t
