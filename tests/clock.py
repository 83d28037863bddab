"""A clock for tests: time moves by a fixed step at every look, only when the code looks."""

from __future__ import annotations

from datetime import datetime, timedelta


class SteppingClock:
    def __init__(self, start: datetime, step: timedelta) -> None:
        self.now, self.step = start, step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now
