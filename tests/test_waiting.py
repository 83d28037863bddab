"""The tests' one wait: it returns what it waited for and, on timeout, says what that was."""

from __future__ import annotations

import itertools

import pytest

from tests.waiting import wait_until


def test_the_first_truthy_value_is_returned() -> None:
    values = iter([None, 0, "", "ready"])

    assert wait_until(lambda: next(values), timeout_s=5, interval_s=0, what="x") == "ready"


def test_with_accept_the_first_accepted_value_is_returned() -> None:
    counts = itertools.count()

    assert wait_until(lambda: next(counts), accept=lambda n: n >= 3, timeout_s=5,
                      interval_s=0, what="three") == 3


def test_a_timeout_names_what_was_awaited_the_last_value_and_the_details() -> None:
    with pytest.raises(AssertionError) as failed:
        wait_until(lambda: 7, accept=lambda n: n > 10, timeout_s=0.05, interval_s=0.01,
                   what="more than ten records", details=lambda: "the daemon's log")

    message = str(failed.value)
    assert "for more than ten records; last seen: 7" in message
    assert message.endswith("\nthe daemon's log")


def test_an_ignored_exception_is_retried_and_shown_if_it_lasts() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(AssertionError, match="raised ConnectionRefusedError: nobody listens"):
        wait_until(refused, timeout_s=0.05, interval_s=0.01, what="a server",
                   ignoring=(ConnectionRefusedError,))


def test_any_other_exception_ends_the_wait_at_once() -> None:
    calls = 0

    def broken() -> bool:
        nonlocal calls
        calls += 1
        raise KeyError("status")

    with pytest.raises(KeyError):
        wait_until(broken, timeout_s=60, what="a status")
    assert calls == 1
