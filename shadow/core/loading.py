"""Loading user code named ``module:function`` (candidates, custom comparators)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from shadow.core.errors import LoadError


def load_callable(path: str, *, what: str) -> Callable[..., Any]:
    """Import ``module:function``; ``what`` names its role in error messages.

    Raises:
        LoadError: the module cannot be imported, lacks the attribute, or the
            attribute is not callable; the message names the path.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise LoadError(f"{what} {path}: expected the form module:function")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # a module failing at import is as unusable as a missing one
        raise LoadError(f"{what} {path}: cannot import module {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LoadError(f"{what} {path}: module {module_name!r} has no {attribute}")
        target = getattr(target, part)
    if not callable(target):
        raise LoadError(f"{what} {path}: {attribute} is not callable")
    return target  # type: ignore[no-any-return]
