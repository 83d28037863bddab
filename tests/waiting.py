"""One way for a test to wait for what another thread, server or process does: poll until
it holds, and on timeout fail saying what was awaited and what was seen last.

Only for real concurrency. Code that takes a clock is tested with one from
``tests/clock.py`` and needs no waiting at all.

    api = wait_until(lambda: daemon_api(db), timeout_s=60, what="the daemon's API")
    wait_until(lambda: records_read(api), accept=lambda n: n >= 300, timeout_s=60,
               what="300 records read")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

_SHOWN_CHARS = 2000


@overload
def wait_until(condition: Callable[[], T | None], *, timeout_s: float, what: str,
               interval_s: float = ..., ignoring: tuple[type[Exception], ...] = ...,
               details: Callable[[], str] | None = ...) -> T: ...


@overload
def wait_until(condition: Callable[[], T], *, accept: Callable[[T], object], timeout_s: float,
               what: str, interval_s: float = ..., ignoring: tuple[type[Exception], ...] = ...,
               details: Callable[[], str] | None = ...) -> T: ...


def wait_until(condition: Callable[[], object], *, timeout_s: float, what: str,
               accept: Callable[[Any], object] | None = None, interval_s: float = 0.05,
               ignoring: tuple[type[Exception], ...] = (),
               details: Callable[[], str] | None = None) -> object:
    """Call ``condition`` every ``interval_s`` until its value is truthy (or, with
    ``accept``, until ``accept(value)`` is), and return that value.

    ``condition`` may do work each time (poll a consumer, read a log). An exception
    of a type in ``ignoring`` counts as "not yet"; any other propagates at once, so
    a condition can end the wait early by asserting (say, that a process still runs).
    It is called at least once, and once more after ``interval_s`` until ``timeout_s``
    has passed.

    Raises:
        AssertionError: on timeout, naming ``what``, the last value or exception seen
            and, with ``details``, its text (say, a subprocess's log).
    """
    started = time.monotonic()
    deadline = started + timeout_s
    last: object = None
    failure: Exception | None = None
    tries = 0
    while True:
        tries += 1
        try:
            last, failure = condition(), None
        except ignoring as exc:
            failure = exc
        else:
            if accept(last) if accept is not None else last:
                return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    seen = (f"the last try raised {type(failure).__name__}: {failure}" if failure is not None
            else f"last seen: {_shown(last)}")
    message = (f"waited {time.monotonic() - started:.1f} s (limit {timeout_s:g} s, "
               f"{tries} tries) for {what}; {seen}")
    if details is not None:
        message += "\n" + details()
    raise AssertionError(message) from failure


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + " …"
