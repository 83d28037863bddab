"""Keeping what the owners marked private out of reports.

``redact`` paths are dotted and relative to an event's payload
(``requester.email``). The value at such a path is replaced by ``[redacted]``
in the payload shown, and wherever it shows through elsewhere: quoted in a
violation's message, or echoed in the AI's output or the human's outcome.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"


def redact(payload: Any, paths: Iterable[str]) -> Any:
    """A copy of ``payload`` with the value at each dotted path replaced by ``[redacted]``.

    >>> redact({"a": {"b": 1, "c": 2}}, ["a.b"])
    {'a': {'b': '[redacted]', 'c': 2}}
    """
    for path in paths:
        payload = _redact(payload, path.split("."))
    return payload


def _redact(value: Any, parts: list[str]) -> Any:
    if isinstance(value, list):
        return [_redact(item, parts) for item in value]
    if not isinstance(value, dict) or parts[0] not in value:
        return value
    head, rest = parts[0], parts[1:]
    return {**value, head: _redact(value[head], rest) if rest else REDACTED}


def _texts_at(value: Any, parts: list[str]) -> Iterable[str]:
    if isinstance(value, list):
        return [t for item in value for t in _texts_at(item, parts)]
    if not parts:
        return _leaf_texts(value)
    if not isinstance(value, dict) or parts[0] not in value:
        return []
    return _texts_at(value[parts[0]], parts[1:])


def _leaf_texts(value: Any) -> list[str]:
    """Every string and number inside a JSON value, as text."""
    if isinstance(value, dict):
        return [t for item in value.values() for t in _leaf_texts(item)]
    if isinstance(value, list):
        return [t for item in value for t in _leaf_texts(item)]
    if isinstance(value, str):
        return [value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    return []


def redact_within(value: Any, payload: Any, paths: Iterable[str]) -> Any:
    """A copy of the JSON ``value`` (a message is a string, which is one) in which
    every value found at ``paths`` of ``payload`` is replaced by ``[redacted]``:
    what ``redact`` hides in the payload must not show through elsewhere.

    >>> redact_within({"reply": "Hi jo@x.org"}, {"email": "jo@x.org"}, ["email"])
    {'reply': 'Hi [redacted]'}
    >>> redact_within("no reply to jo@x.org", {"a": {"b": "jo@x.org"}}, ["a.b"])
    'no reply to [redacted]'
    """
    secrets = _secrets(payload, paths)
    return _scrub(value, secrets) if secrets else value


def _secrets(payload: Any, paths: Iterable[str]) -> list[str]:
    # Longest first, so a value that contains another is replaced whole.
    found = {v for path in paths for v in _texts_at(payload, path.split(".")) if v}
    return sorted(found, key=len, reverse=True)


def _scrub(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool) and str(value) in secrets:
        return REDACTED
    return value
