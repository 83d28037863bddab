"""A small, safe template language for request bodies and prompts.

Placeholders name dotted paths into a context and nothing else: ``{{ payload.subject }}``.
There are no expressions, filters or calls, so a template from a configuration
file cannot execute anything. A string that is exactly one placeholder is
replaced by the value itself (an object stays an object); a placeholder inside
longer text is replaced by the value as text (objects and lists as JSON).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shadow.core.errors import ShadowError
from shadow.core.paths import MISSING, get_path

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_$.\-]+)\s*\}\}")


class TemplateError(ShadowError):
    """A placeholder names a path the context does not have."""


def render(template: Any, context: dict[str, Any]) -> Any:
    """Fill every placeholder in ``template`` (any JSON value) from ``context``.

    Raises:
        TemplateError: a placeholder's path is missing from the context.

    >>> render({"text": "{{ payload.subject }}!", "all": "{{ segment }}"},
    ...        {"payload": {"subject": "Refund"}, "segment": {"tier": "pro"}})
    {'text': 'Refund!', 'all': {'tier': 'pro'}}
    """
    if isinstance(template, str):
        return _render_text(template, context)
    if isinstance(template, dict):
        return {key: render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, context) for value in template]
    return template


def _render_text(text: str, context: dict[str, Any]) -> Any:
    whole = _PLACEHOLDER.fullmatch(text.strip())
    if whole:
        return _lookup(whole.group(1), context)
    return _PLACEHOLDER.sub(lambda match: _as_text(_lookup(match.group(1), context)), text)


def _lookup(path: str, context: dict[str, Any]) -> Any:
    value = get_path(context, path)
    if value is MISSING:
        raise TemplateError(f"the template names {path!r}, which this event does not have")
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
