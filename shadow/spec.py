"""The base of every configuration spec, and the field shapes several specs share.

A spec is a small frozen value that refuses keys it does not know. The patterns
below are named in words by the error messages of :func:`shadow.config.parse_config`
(``expected the form module:function``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

CALLABLE_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
URL_PATTERN = r"^https?://"

CallablePath = Annotated[str, Field(pattern=CALLABLE_PATTERN, description="module:function")]


class Spec(BaseModel):
    """A piece of the configuration file: frozen, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")
