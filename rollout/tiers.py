"""The tier of a prediction under the policy: a pure function of the prediction.

A prediction that failed, abstained or violated a hard constraint is ``human``
whatever the rules say: there is nothing safe to act on or propose. Otherwise
each action the output proposes is matched against the rules in order (its tool,
the output's label, its own ``confidence`` or else the prediction's), and the
prediction takes the most careful tier of its actions; an output without actions
is matched once, by its label and the prediction's confidence, and rules naming a
``tool`` pass it by. No rule matching gives the policy's ``default``.

>>> from shadow.config.tiers import TiersSpec
>>> policy = Policy(TiersSpec.model_validate(
...     {"rules": [{"tool": "add_tag", "tier": "auto"}], "default": "review"}))
>>> policy.assess({"actions": [{"tool": "add_tag", "arguments": {}}]}, None).tier.value
'auto'
>>> policy.assess({"actions": [{"tool": "add_tag", "arguments": {}},
...                            {"tool": "refund", "arguments": {}}]}, None).rule
'default'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shadow.config.tiers import Tier, TierRule, TiersSpec
from shadow.core.actions import actions_of
from shadow.core.paths import MISSING, get_path

ERROR, ABSTAINED, VIOLATION, DEFAULT = "error", "abstained", "violation", "default"
"""What chose a tier when no rule did (``Assessment.rule``); a rule is ``rules[i]``."""
FALLBACK = "fallback"
"""What chose the tier of a decision whose own tier fell back (:mod:`rollout.tier_health`)."""


@dataclass(frozen=True, slots=True)
class Assessment:
    """A prediction's tier and what chose it: ``rules[i]``, ``default``, or the reason it
    fell to ``human`` (``error``, ``abstained``, ``violation``)."""

    tier: Tier
    rule: str


AUTO = Assessment(Tier.AUTO, DEFAULT)


class Policy:
    """Assesses predictions by a :class:`~shadow.config.tiers.TiersSpec`.

    Without a spec every usable prediction is ``auto``, as before tiers existed.
    """

    def __init__(self, spec: TiersSpec | None = None) -> None:
        self.spec = spec if spec is not None else TiersSpec(default=Tier.AUTO)

    def assess(self, output: Any, confidence: float | None, *, error: bool = False,
               abstained: bool = False, violations: bool = False) -> Assessment:
        """The tier of a prediction with this ``output`` and (prediction-level) ``confidence``."""
        if error:
            return Assessment(Tier.HUMAN, ERROR)
        if abstained:
            return Assessment(Tier.HUMAN, ABSTAINED)
        if violations:
            return Assessment(Tier.HUMAN, VIOLATION)
        label = self.label(output)
        actions = actions_of(output).actions
        if not actions:
            return self._first_match(None, label, confidence)
        found = [self._first_match(a.tool, label, a.confidence if a.confidence is not None
                                   else confidence) for a in actions]
        return max(found, key=lambda a: a.tier.care)  # the first of the most careful

    @property
    def all_auto(self) -> bool:
        """No rules and a default of ``auto``: every usable prediction is ``auto``, whatever
        its output (so a store can assess a whole batch in one statement)."""
        return not self.spec.rules and self.spec.default is Tier.AUTO

    def label(self, output: Any) -> Any:
        """The classification's label: the value at ``label_path``, else the output itself;
        ``MISSING`` when the path leads nowhere."""
        path = self.spec.label_path
        return output if path is None else get_path(output, path)

    def _first_match(self, tool: str | None, label: Any,
                     confidence: float | None) -> Assessment:
        for index, rule in enumerate(self.spec.rules):
            if _matches(rule, tool, label, confidence):
                return Assessment(rule.tier, f"rules[{index}]")
        return Assessment(self.spec.default, DEFAULT)


def _matches(rule: TierRule, tool: str | None, label: Any, confidence: float | None) -> bool:
    if rule.tool is not None and tool not in rule.tool:
        return False
    if rule.label is not None and not _label_in(label, rule.label):
        return False
    return rule.confidence is None or (confidence is not None
                                       and rule.confidence.holds(confidence))


def _label_in(label: Any, labels: list[Any]) -> bool:
    """Whether the label is one of ``labels``: equal values of the same JSON type
    (``true`` is not ``1``)."""
    if label is MISSING or isinstance(label, dict | list) or label is None:
        return False
    return any(type(label) is type(value) and label == value for value in labels)
