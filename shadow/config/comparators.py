"""Comparator specs: how the configuration file says which comparator to build.

``comparator`` and the named ``comparators`` of :class:`shadow.config.file.Config`
hold these; :func:`shadow.compare.comparators.build_comparator` turns one into a comparator.
The ``kind`` key picks the spec.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from shadow.core.spec import URL_PATTERN, CallablePath, Spec


class _ComparatorBase(Spec):
    prediction_path: str | None = None
    """Dotted path into the prediction output to compare, e.g. ``category``."""
    outcome_path: str | None = None
    """Dotted path into the outcome to compare."""


class ExactSpec(_ComparatorBase):
    kind: Literal["exact"] = "exact"


class NormalizedSpec(_ComparatorBase):
    kind: Literal["normalized"]


class SetSpec(_ComparatorBase):
    kind: Literal["set"]
    threshold: float = Field(1.0, ge=0.0, le=1.0)
    """Minimum Jaccard similarity of the two lists for agreement."""


class NumericSpec(_ComparatorBase):
    kind: Literal["numeric"]
    abs_tol: float = Field(0.0, ge=0.0)
    rel_tol: float = Field(0.0, ge=0.0)


class FieldsSpec(_ComparatorBase):
    kind: Literal["fields"]
    fields: dict[str, ComparatorSpec] = Field(min_length=1)
    """A comparator per field; the output agrees when every listed field agrees."""


class CustomSpec(_ComparatorBase):
    kind: Literal["custom"]
    function: CallablePath
    """``module:function`` taking ``(prediction_output, outcome)`` and returning a bool."""


class SimilaritySpec(_ComparatorBase):
    """Lexical similarity of two texts (see :mod:`shadow.compare.text`)."""

    kind: Literal["similarity"]
    metric: Literal["f1", "rouge_l"] = "f1"
    """Token-level F1 (bag of words) or ROUGE-L (longest common subsequence) F-measure."""
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    """The texts agree when the score is at least this."""


class SemanticSpec(_ComparatorBase):
    """Cosine similarity of sentence embeddings from a model shipped in the ``semantic`` extra."""

    kind: Literal["semantic"]
    threshold: float = Field(0.8, ge=-1.0, le=1.0)
    """The texts agree when the cosine similarity is at least this."""


class JudgeSpec(_ComparatorBase):
    """An LLM asked, through an OpenAI-compatible chat API, whether the two agree."""

    kind: Literal["judge"]
    base_url: str = Field(pattern=URL_PATTERN)
    """Up to ``/v1``; ``/chat/completions`` is appended."""
    model: str = Field(min_length=1)
    api_key_env: str | None = None
    """Environment variable holding the API key, sent as a bearer token."""
    rubric: str | None = None
    """The instructions; ``{{ output }}`` and ``{{ outcome }}`` are filled in. A default
    rubric asks whether the two say the same thing."""
    timeout_s: float = Field(30.0, gt=0.0)
    max_attempts: int = Field(3, ge=1, le=20)
    """Attempts per call in all; connection errors, timeouts, 429 and 5xx are retried."""
    cache: bool = True
    cache_path: str = ".shadow-judge-cache.sqlite"
    """SQLite file of verdicts by content hash, relative to the working directory."""


class ToolSpec(Spec):
    """How the arguments of one tool's actions are compared."""

    arguments: dict[str, ComparatorSpec] = Field(default_factory=dict)
    """A comparator per argument name, e.g. ``amount: {kind: numeric, abs_tol: 0.5}``."""
    other_arguments: Literal["exact", "ignore"] = "exact"
    """Arguments not listed: compared exactly, or not compared at all."""


class ActionsSpec(_ComparatorBase):
    """Proposed actions against the person's, per tool (see :mod:`shadow.compare.actions`)."""

    kind: Literal["actions"]
    mode: Literal["same_set", "covers", "first"] = "same_set"
    """``same_set``: the AI's actions are the person's; ``covers``: the person's are among
    the AI's; ``first``: only the first action of each side is compared."""
    ordered: bool = False
    """Also require the tools in the same order (``covers``: the person's in the AI's order)."""
    tools: dict[str, ToolSpec] = Field(default_factory=dict)
    """Argument comparators by tool name; a tool not listed compares its arguments exactly."""


ComparatorSpec = Annotated[
    ExactSpec | NormalizedSpec | SetSpec | NumericSpec | FieldsSpec | CustomSpec
    | SimilaritySpec | SemanticSpec | JudgeSpec | ActionsSpec,
    Field(discriminator="kind"),
]
FieldsSpec.model_rebuild()
ToolSpec.model_rebuild()
ActionsSpec.model_rebuild()

COMPARATOR_KINDS = (
    "exact", "normalized", "set", "numeric", "fields", "custom",
    "similarity", "semantic", "judge", "actions",
)
