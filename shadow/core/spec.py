"""The base of every configuration spec, and the field shapes several specs share.

A spec is a small frozen value that refuses keys it does not know. The patterns
below are named in words by the error messages of :func:`shadow.config.file.parse_config`
(``expected the form module:function``).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

CALLABLE_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
URL_PATTERN = r"^https?://"

CallablePath = Annotated[str, Field(pattern=CALLABLE_PATTERN, description="module:function")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(value: Any) -> Any:
    """``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"`` → a timedelta (numbers are seconds)."""
    if isinstance(value, timedelta) or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2] or "s"])
    raise ValueError(f"expected a duration such as 90s, 15m, 2h or 1d, got {value!r}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Spec(BaseModel):
    """A piece of the configuration file: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
