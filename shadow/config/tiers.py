"""The tier policy: which live decisions act alone, which a person reviews, which stay human.

Written under ``rollout.tiers``::

    rollout:
      tiers:
        rules:                                  # the first rule that matches wins
          - {tool: add_tag, tier: auto}
          - {tool: send_reply, confidence: {at_least: 0.8}, tier: review}
          - {tool: [issue_refund, change_plan], tier: human}
          - {label: spam, confidence: {at_least: 0.95}, tier: auto}
        default: human                          # when no rule matches
        label_path: category                    # a classification's label in the output
        evidence: [subject, requester.plan]     # payload fields a reviewer sees
      review_sink: {kind: kafka, bootstrap: "localhost:9092", topic: reviews}

A rule matches an action by its ``tool`` (one name or a list), a classification by
its ``label`` (the value at ``label_path``), and either by a ``confidence`` band
(``at_least`` inclusive, ``below`` exclusive); a rule without one of these does not
look at it. A prediction proposing several actions takes the most careful tier of
its actions (``human`` over ``review`` over ``auto``). Errors, abstentions and
hard-check violations are always ``human``; see :mod:`rollout.tiers` for the evaluation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator

from shadow.core.spec import Spec

Label = str | int | bool


class Tier(enum.StrEnum):
    """What happens to a live decision, from least to most careful."""

    AUTO = "auto"
    """Published to the action sink: production acts on it."""
    REVIEW = "review"
    """Published to the review sink as a proposal; a person approves, edits or rejects."""
    HUMAN = "human"
    """Never published: the case stays with people."""

    @property
    def care(self) -> int:
        """The order of carefulness: ``auto`` 0, ``review`` 1, ``human`` 2."""
        return _CARE[self]


_CARE = {Tier.AUTO: 0, Tier.REVIEW: 1, Tier.HUMAN: 2}


class Band(Spec):
    """A confidence band: ``at_least`` (inclusive) up to ``below`` (exclusive)."""

    at_least: float = Field(0.0, ge=0.0, le=1.0)
    below: float | None = Field(None, gt=0.0, le=1.0)
    """Unset: up to and including 1."""

    @model_validator(mode="after")
    def _not_empty(self) -> Band:
        if self.below is not None and self.below <= self.at_least:
            raise ValueError(f"an empty band: below ({self.below}) must be above at_least "
                             f"({self.at_least})")
        return self

    def holds(self, confidence: float) -> bool:
        return confidence >= self.at_least and (self.below is None or confidence < self.below)

    def text(self) -> str:
        upper = f"< {self.below:g}" if self.below is not None else "<= 1"
        return f"{self.at_least:g} <= confidence {upper}"


class TierRule(Spec):
    """One rule: what it matches and the tier it gives."""

    tier: Tier
    tool: list[str] | None = None
    """The action's tool: one name or a list. Unset: any action, and outputs without any."""
    label: list[Label] | None = None
    """The classification's label (at ``label_path``): one value or a list. Unset: any."""
    confidence: Band | None = None
    """Unset: any confidence, or none at all."""

    @field_validator("tool", "label", mode="before")
    @classmethod
    def _one_or_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | int | bool) else value

    @field_validator("tool", "label")
    @classmethod
    def _not_empty(cls, value: list[Any] | None) -> list[Any] | None:
        if value is not None and not value:
            raise ValueError("an empty list matches nothing; leave the key out to match any")
        return value

    def covers(self, other: TierRule) -> bool:
        """Whether every action or label ``other`` matches, this rule matches too
        (confidence aside)."""
        return _within(other.tool, self.tool) and _within(other.label, self.label)

    def text(self) -> str:
        """The rule as people read it: ``tool issue_refund, 0.8 <= confidence < 1 → review``."""
        parts = []
        if self.tool is not None:
            parts.append("tool " + ", ".join(self.tool))
        if self.label is not None:
            parts.append("label " + ", ".join(str(label) for label in self.label))
        if self.confidence is not None:
            parts.append(self.confidence.text())
        return f"{'; '.join(parts) or 'anything'} → {self.tier.value}"


def _within(inner: list[Any] | None, outer: list[Any] | None) -> bool:
    if outer is None:
        return True
    return inner is not None and set(inner) <= set(outer)


class TiersSpec(Spec):
    """The tier policy of the rolled-out candidate's decisions."""

    rules: list[TierRule] = Field(default_factory=list)
    """In order; the first that matches decides."""
    default: Tier = Tier.HUMAN
    """The tier of a decision no rule matches: the failure mode involves a person."""
    label_path: str | None = None
    """Dotted path to a classification's label in the output. Unset: the comparator's
    ``prediction_path`` (what is compared with the person's decision), and without one
    the output itself."""
    evidence: list[str] = Field(default_factory=list)
    """Dotted payload paths of the event's fields a reviewer sees beside a proposal."""
    redact: list[str] | None = None
    """Payload paths replaced by ``[redacted]`` in the evidence; ``report.redact`` by default."""
    reviewers_blind: bool = False
    """Reviewers do not see the proposal's confidence: their verdicts count as independent
    human outcomes for the gates. Otherwise they are anchored on the proposal and left out."""

    @model_validator(mode="after")
    def _every_rule_reachable(self) -> TiersSpec:
        for index, rule in enumerate(self.rules):
            earlier = [(i, r) for i, r in enumerate(self.rules[:index]) if r.covers(rule)]
            if _covered(rule.confidence, [r.confidence for _, r in earlier]):
                names = ", ".join(f"rules[{i}]" for i, _ in earlier)
                raise ValueError(
                    f"rules[{index}] ({rule.text()}) is unreachable: the earlier {names} "
                    f"already match everything it matches over its whole confidence band "
                    f"(the first matching rule wins); narrow or reorder them")
        return self

    def tiers_used(self) -> set[Tier]:
        return {self.default, *(rule.tier for rule in self.rules)}


def _covered(band: Band | None, earlier: Sequence[Band | None]) -> bool:
    """Whether the union of the earlier bands contains ``band`` (``None``: all of [0, 1])."""
    start = band.at_least if band is not None else 0.0
    end = band.below if band is not None else None  # None: up to and including 1
    spans = sorted(((b.at_least, b.below) if b is not None else (0.0, None)) for b in earlier)
    reached = start
    for low, high in spans:
        if low > reached:
            break
        if high is None:
            return True
        reached = max(reached, high)
        if end is not None and reached >= end:
            return True
    return False


def check_tools(tiers: TiersSpec, toolset: Sequence[str] | None, *, candidate: str) -> None:
    """Refuse rules naming a tool the candidate cannot propose.

    ``toolset`` is the candidate's tools where they are known (a chat candidate's
    ``tools``), else ``None`` and every name is accepted. Called with the whole
    configuration in view (:class:`shadow.config.file.Config`).

    Raises:
        ValueError: naming the rule, the tool and the tools there are.
    """
    if toolset is None:
        return
    for index, rule in enumerate(tiers.rules):
        unknown = [tool for tool in rule.tool or [] if tool not in toolset]
        if unknown:
            raise ValueError(
                f"tiers.rules[{index}].tool: {', '.join(map(repr, unknown))} is not "
                f"among the tools of candidate {candidate!r}: {sorted(toolset)}")


def with_defaults(raw: Any) -> Any:
    """The raw configuration with the policy's unset ``label_path`` and ``redact`` taken
    from the comparator's ``prediction_path`` and ``report.redact``; anything that is not
    shaped as expected is left for validation to name."""
    if not isinstance(raw, dict):
        return raw
    rollout = raw.get("rollout")
    tiers = rollout.get("tiers") if isinstance(rollout, dict) else None
    if not isinstance(tiers, dict) or not isinstance(rollout, dict):
        return raw
    tiers = dict(tiers)
    comparator, report = raw.get("comparator"), raw.get("report")
    if "label_path" not in tiers and isinstance(comparator, dict):
        path = comparator.get("prediction_path")
        if isinstance(path, str):
            tiers["label_path"] = path
    if "redact" not in tiers and isinstance(report, dict) and "redact" in report:
        tiers["redact"] = report["redact"]
    return {**raw, "rollout": {**rollout, "tiers": tiers}}
