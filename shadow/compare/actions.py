"""The ``actions`` comparator: the actions an AI proposed against those the person took.

Both sides are read with :func:`shadow.core.actions.actions_of` (the key ``actions`` of the
output and of the outcome). Actions are matched per tool, order-insensitive unless
``ordered``: among the actions of one tool, pairs whose arguments all agree are matched
first (as many as possible), the rest in their order. An action left without a partner is
*missed* (the person took it, the AI would not) or *extra* (the AI would, the person did
not). Each matched pair's arguments are judged by the tool's argument comparators (any
comparator spec: ``exact``, ``normalized``, ``numeric``, ``set``, ``semantic``, ...);
arguments not listed are compared exactly, or ignored with ``other_arguments: ignore``.

The judgement's ``fields`` hold one verdict per compared argument, named ``tool.argument``
(``issue_refund.amount``), false when any pair of that tool disagrees on it; its note names
the missed and extra actions, the disagreeing arguments and any element that is not an
action.

>>> from shadow.config.file import parse_config
>>> from shadow.compare.comparators import build_comparator
>>> spec = parse_config({"comparator": {"kind": "actions", "tools": {
...     "issue_refund": {"arguments": {"amount": {"kind": "numeric", "abs_tol": 1}}}}}})
>>> comparator = build_comparator(spec.comparator)
>>> ai = {"actions": [{"tool": "issue_refund", "arguments": {"amount": 20.5}}]}
>>> comparator.compare(ai, {"actions": [{"tool": "issue_refund", "arguments": {"amount": 20}}]})
Judgement(agree=True, fields={'issue_refund.amount': True}, note=None, deferred=False)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from shadow.compare.base import Comparator, Judgement, SpecComparator, judge_absent
from shadow.config.comparators import ActionsSpec, ComparatorSpec, ExactSpec
from shadow.core.actions import Action, actions_of
from shadow.core.paths import MISSING

__all__ = ["ActionsComparator", "Matched"]

Build = Callable[[ComparatorSpec], Comparator]


@dataclass(frozen=True, slots=True)
class Matched:
    """The outcome of matching two lists of actions."""

    pairs: tuple[tuple[Action, Action, Judgement], ...]
    """(the AI's action, the person's, the verdict on their arguments), per tool."""
    extra: tuple[Action, ...]
    missed: tuple[Action, ...]


class _Arguments:
    """Judges the arguments of two actions of one tool."""

    def __init__(self, listed: dict[str, Comparator], others: Comparator | None) -> None:
        self._listed = listed
        self._others = others

    def judge(self, ai: dict[str, Any], human: dict[str, Any]) -> Judgement:
        names = list(self._listed)
        if self._others is not None:
            names += sorted((set(ai) | set(human)) - set(self._listed))
        verdicts: dict[str, bool] = {}
        notes: list[str] = []
        for name in names:
            comparator = self._listed.get(name) or self._others
            assert comparator is not None  # every name is listed, or others are compared
            a, h = ai.get(name, MISSING), human.get(name, MISSING)
            judgement = judge_absent(a, h, name, name) or comparator.compare(a, h)
            if judgement.deferred:
                return Judgement.defer(f"{name}: {judgement.note}")
            if a is MISSING and h is MISSING:
                continue  # neither side gave it: nothing was compared
            verdicts[name] = judgement.agree
            if not judgement.agree:
                notes.append(f"{name}: {judgement.note or f'{_show(a)} vs {_show(h)}'}")
        return Judgement(all(verdicts.values()), verdicts, "; ".join(notes) or None)


class ActionsComparator(SpecComparator):
    """Proposed actions against the person's: ``same_set``, ``covers`` or ``first``.

    ``build`` makes the argument comparators from their specs (it is
    :func:`shadow.compare.comparators.build_comparator`, passed in so this module does not
    import the module that registers it).
    """

    def __init__(self, spec: ActionsSpec, build: Build) -> None:
        super().__init__(spec)
        self._mode = spec.mode
        self._ordered = spec.ordered
        exact = build(ExactSpec())
        self._default = _Arguments({}, exact)
        self._tools = {
            tool: _Arguments({name: build(sub) for name, sub in found.arguments.items()},
                             None if found.other_arguments == "ignore" else exact)
            for tool, found in spec.tools.items()
        }

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        proposed, taken = actions_of(output), actions_of(outcome)
        problems = ([f"prediction {p}" for p in proposed.problems]
                    + [f"outcome {p}" for p in taken.problems])
        ai, human = list(proposed.actions), list(taken.actions)
        if self._mode == "first":
            ai, human = ai[:1], human[:1]
        matched = self.match(ai, human)
        if isinstance(matched, Judgement):
            return matched
        fields: dict[str, bool] = {}
        notes = list(problems)
        notes += [f"missed {_describe(a)}" for a in matched.missed]
        notes += [f"extra {_describe(a)}" for a in matched.extra]
        for a, _, judgement in matched.pairs:
            for name, verdict in judgement.fields.items():
                field = f"{a.tool}.{name}"
                fields[field] = fields.get(field, True) and verdict
            if judgement.note is not None:
                notes.append(f"{a.tool}: {judgement.note}")
        in_order = not self._ordered or self._in_order(ai, human)
        if not in_order:
            notes.append("actions in another order")
        agree = (not problems and not matched.missed and in_order
                 and all(j.agree for _, _, j in matched.pairs)
                 and (self._mode == "covers" or not matched.extra))
        return Judgement(agree, fields, "; ".join(notes) or None)

    def match(self, ai: Sequence[Action], human: Sequence[Action]) -> Matched | Judgement:
        """Pair the AI's actions with the person's, tool by tool; a deferred judgement when
        an argument comparator cannot judge now."""
        by_tool: dict[str, tuple[list[Action], list[Action]]] = defaultdict(lambda: ([], []))
        for a in ai:
            by_tool[a.tool][0].append(a)
        for h in human:
            by_tool[h.tool][1].append(h)
        pairs: list[tuple[Action, Action, Judgement]] = []
        extra: list[Action] = []
        missed: list[Action] = []
        for tool, (mine, theirs) in by_tool.items():
            found = self._pair(self._tools.get(tool, self._default), mine, theirs)
            if isinstance(found, Judgement):
                return found
            pairs += [(mine[i], theirs[j], verdict) for i, j, verdict in found]
            paired_ai, paired_human = {i for i, _, _ in found}, {j for _, j, _ in found}
            extra += [a for i, a in enumerate(mine) if i not in paired_ai]
            missed += [h for j, h in enumerate(theirs) if j not in paired_human]
        return Matched(tuple(pairs), tuple(extra), tuple(missed))

    def _pair(self, arguments: _Arguments, mine: list[Action], theirs: list[Action]
              ) -> list[tuple[int, int, Judgement]] | Judgement:
        if self._ordered:
            verdicts = []
            for i, (a, h) in enumerate(zip(mine, theirs, strict=False)):
                verdict = arguments.judge(a.arguments, h.arguments)
                if verdict.deferred:
                    return verdict
                verdicts.append((i, i, verdict))
            return verdicts
        grid: dict[tuple[int, int], Judgement] = {}
        for i, a in enumerate(mine):
            for j, h in enumerate(theirs):
                verdict = arguments.judge(a.arguments, h.arguments)
                if verdict.deferred:
                    return verdict
                grid[(i, j)] = verdict
        partner = _max_matching(len(mine), len(theirs), lambda i, j: grid[(i, j)].agree)
        free_ai = [i for i in range(len(mine)) if i not in partner]
        free_human = [j for j in range(len(theirs)) if j not in partner.values()]
        partner.update(zip(free_ai, free_human, strict=False))
        return [(i, j, grid[(i, j)]) for i, j in sorted(partner.items())]

    def _in_order(self, ai: Sequence[Action], human: Sequence[Action]) -> bool:
        mine, theirs = [a.tool for a in ai], [h.tool for h in human]
        if self._mode != "covers":
            return mine == theirs
        remaining = iter(mine)
        return all(tool in remaining for tool in theirs)  # a subsequence


def _max_matching(left: int, right: int, edge: Callable[[int, int], bool]) -> dict[int, int]:
    """A maximum matching of a small bipartite graph (augmenting paths): left to right."""
    owner: dict[int, int] = {}  # right -> left

    def augment(i: int, seen: set[int]) -> bool:
        for j in range(right):
            if j in seen or not edge(i, j):
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(left):
        augment(i, set())
    return {i: j for j, i in owner.items()}


def _describe(action: Action) -> str:
    return f"{action.tool} {_show(action.arguments)}"


def _show(value: Any, limit: int = 120) -> str:
    if value is MISSING:
        return "(absent)"
    shown = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
