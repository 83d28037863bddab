"""Hard constraints: categorically wrong outputs, caught by rule on every prediction.

A check looks at one output and returns what is wrong with it as short texts,
each the check's name, a space, and the problem::

    pii:email matched at output.reply
    required output.category is missing
    tone check raised: KeyError: 'reply'
    refund_cap:max issue_refund.amount=250 is more than 100 (actions[0])


The first word is what reports and metrics count by, so check names have no
spaces. Texts never quote the offending value of a PII match: the store must
not keep what the check exists to keep out.

:class:`Checks` is built once per candidate (patterns and schemas compiled,
custom functions loaded) and applied by the runner right after ``predict``.
Action checks (kind ``action``) look at the proposed actions of an output
(:func:`shadow.core.actions.actions_of`): each violation names its rule
(``name:forbidden``, ``:min``, ``:max``, ``:pattern``, ``:schema``), the tool, the
argument and the action's index. Where any action check is configured, an element of
``actions`` that is not an action is a violation too (``actions:malformed``): a call
that cannot be read cannot be cleared, so it is never published.
Errored predictions are not checked (there is no output); abstentions are,
because they are stored. A check that raises is a violation, never a crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from shadow.config.candidates import (
    ActionCheckSpec,
    CheckSpec,
    CustomCheckSpec,
    JsonSchemaCheckSpec,
    LabelsCheckSpec,
    MaxLengthCheckSpec,
    PiiCheckSpec,
    RegexCheckSpec,
    RequiredCheckSpec,
)
from shadow.core.actions import Action, actions_of
from shadow.core.loading import load_callable
from shadow.core.models import Prediction
from shadow.core.paths import MISSING, get_path

__all__ = ["Check", "Checks", "build_check", "check_label", "luhn"]

Check = Callable[[Any], list[str]]
"""Takes an output, returns its violations (none: an empty list)."""

_MAX_DETAIL = 200


class Checks:
    """A candidate's checks, compiled once."""

    def __init__(self, checks: Sequence[tuple[str, Check]]) -> None:
        self._checks = list(checks)

    @classmethod
    def from_specs(cls, specs: Sequence[CheckSpec]) -> Checks | None:
        """The checks a configuration lists; None when it lists none.

        Raises:
            LoadError: a custom check's function cannot be loaded.
        """
        if not specs:
            return None
        checks = [(_name_of(spec), build_check(spec)) for spec in specs]
        if any(isinstance(spec, ActionCheckSpec) for spec in specs):
            checks.append(("actions", _malformed_actions))
        return cls(checks)

    def violations(self, output: Any) -> tuple[str, ...]:
        found: list[str] = []
        for name, check in self._checks:
            try:
                found.extend(check(output))
            except Exception as exc:  # noqa: BLE001 - a broken check is a violation, not a crash
                found.append(f"{name} check raised: {_exception(exc)}")
        return tuple(found)

    def apply(self, predictions: list[Prediction]) -> list[Prediction]:
        """The predictions with their violations added to those the candidate found
        (a chat candidate's ``tool_call:…``); only violating ones are copied."""
        checked = predictions
        for i, p in enumerate(predictions):
            if p.error is not None:
                continue
            found = self.violations(p.output)
            if found:
                if checked is predictions:
                    checked = list(predictions)
                checked[i] = replace(p, violations=p.violations + found)
        return checked


def check_label(violation: str) -> str:
    """The check a violation text names (its first word), as reports and metrics count it."""
    return violation.split(" ", 1)[0]


def build_check(spec: CheckSpec) -> Check:
    name = _name_of(spec)
    if isinstance(spec, RegexCheckSpec):
        return _regex(spec, name)
    if isinstance(spec, PiiCheckSpec):
        return _pii(spec, name)
    if isinstance(spec, RequiredCheckSpec):
        return _required(spec, name)
    if isinstance(spec, JsonSchemaCheckSpec):
        return _schema(spec, name)
    if isinstance(spec, LabelsCheckSpec):
        return _labels(spec, name)
    if isinstance(spec, MaxLengthCheckSpec):
        return _max_length(spec, name)
    if isinstance(spec, ActionCheckSpec):
        return _action(spec, name)
    return _custom(spec, name)


def _name_of(spec: CheckSpec) -> str:
    if spec.name is not None:
        return spec.name
    return spec.function if isinstance(spec, CustomCheckSpec) else spec.kind


# -- the kinds ---------------------------------------------------------------------


def _regex(spec: RegexCheckSpec, name: str) -> Check:
    pattern = re.compile(spec.pattern, re.IGNORECASE if spec.ignore_case else 0)
    where, must_match = _where(spec.path), spec.must == "match"

    def check(output: Any) -> list[str]:
        value = _at(output, spec.path)
        if value is MISSING:
            return [f"{name} found nothing at {where}"] if must_match else []
        matched = pattern.search(_text(value)) is not None
        if matched == must_match:
            return []
        return [f"{name} {'did not match' if must_match else 'matched'} at {where}"]

    return check


def _pii(spec: PiiCheckSpec, name: str) -> Check:
    finders = [(kind, _FINDERS[kind]) for kind in dict.fromkeys(spec.types)]

    def check(output: Any) -> list[str]:
        value = _at(output, spec.path)
        if value is MISSING:
            return []
        leaves = list(_leaves(value, _where(spec.path)))
        found = []
        for kind, finds in finders:
            where = next((w for w, text in leaves if finds(text)), None)
            if where is not None:
                found.append(f"{name}:{kind} matched at {where}")
        return found

    return check


def _required(spec: RequiredCheckSpec, name: str) -> Check:
    def check(output: Any) -> list[str]:
        return [f"{name} {_where(path)} is missing" for path in spec.fields
                if get_path(output, path) in (MISSING, None)]

    return check


def _schema(spec: JsonSchemaCheckSpec, name: str) -> Check:
    validator = Draft202012Validator(spec.schema_)

    def check(output: Any) -> list[str]:
        error = best_match(validator.iter_errors(output))
        if error is None:
            return []
        path = ".".join(str(part) for part in error.absolute_path)
        return [f"{name} invalid at {_where(path or None)}: {_short(error.message)}"]

    return check


def _labels(spec: LabelsCheckSpec, name: str) -> Check:
    allowed = {orjson.dumps(label) for label in spec.allowed}
    where = _where(spec.path)

    def check(output: Any) -> list[str]:
        value = get_path(output, spec.path)
        if value is MISSING:
            return [f"{name} {where} is missing"]
        for label in value if isinstance(value, list) else [value]:
            shown = _json(label)
            if shown.encode() not in allowed:
                return [f"{name} {where}={_short(shown)} is not an allowed label"]
        return []

    return check


def _max_length(spec: MaxLengthCheckSpec, name: str) -> Check:
    where = _where(spec.path)

    def check(output: Any) -> list[str]:
        value = _at(output, spec.path)
        if value is MISSING:
            return []
        length = len(_text(value))
        if length <= spec.max:
            return []
        return [f"{name} {where} has {length} characters, more than {spec.max}"]

    return check


def _custom(spec: CustomCheckSpec, name: str) -> Check:
    function = load_callable(spec.function, what="check")

    def check(output: Any) -> list[str]:
        result = function(output)
        if result is None or result is True:
            return []
        if result is False or result == "":
            return [f"{name} failed"]
        if isinstance(result, str):
            return [f"{name} {_short(result)}"]
        return [f"{name} returned a {type(result).__name__}; expected None, True, False "
                f"or a message"]

    return check


# -- actions -----------------------------------------------------------------------


def _action(spec: ActionCheckSpec, name: str) -> Check:
    rules = _argument_rules(spec, name)

    def check(output: Any) -> list[str]:
        found: list[str] = []
        for index, action in actions_of(output).indexed():
            if action.tool != spec.tool:
                continue
            where = f"(actions[{index}])"
            if spec.forbidden:
                found.append(f"{name}:forbidden {spec.tool} is a forbidden tool {where}")
                continue
            value = _argument(action, spec.argument)
            if value is MISSING:
                continue
            found.extend(f"{problem} {where}" for rule in rules
                         if (problem := rule(value)) is not None)
        return found

    return check


def _argument_rules(spec: ActionCheckSpec, name: str) -> list[Callable[[Any], str | None]]:
    """One function per rule of the check, each returning the problem with a value."""
    target = f"{spec.tool}.{spec.argument}" if spec.argument else f"{spec.tool} arguments"
    rules: list[Callable[[Any], str | None]] = []
    low, high = spec.min, spec.max
    if low is not None:
        rules.append(lambda v: _bound(v, f"{name}:min {target}", low, below=True))
    if high is not None:
        rules.append(lambda v: _bound(v, f"{name}:max {target}", high, below=False))
    if spec.pattern is not None:
        pattern = re.compile(spec.pattern)
        shown = _short(spec.pattern)
        rules.append(lambda v: None if pattern.search(_text(v)) is not None
                     else f"{name}:pattern {target} does not match {shown}")
    if spec.schema_ is not None:
        validator = Draft202012Validator(spec.schema_)

        def schema(value: Any) -> str | None:
            error = best_match(validator.iter_errors(value))
            if error is None:
                return None
            at = ".".join(str(part) for part in error.absolute_path) or "(root)"
            return f"{name}:schema {target} invalid at {at}: {_short(error.message)}"

        rules.append(schema)
    return rules


def _bound(value: Any, what: str, bound: float, *, below: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{what} is not a number ({_kind(value)})"
    if below and value < bound:
        return f"{what}={value} is less than {_number(bound)}"
    if not below and value > bound:
        return f"{what}={value} is more than {_number(bound)}"
    return None


def _number(bound: float) -> int | float:
    return int(bound) if bound.is_integer() else bound


def _argument(action: Action, path: str | None) -> Any:
    return action.arguments if path is None else get_path(action.arguments, path)


def _malformed_actions(output: Any) -> list[str]:
    return [f"actions:malformed {_short(problem)}" for problem in actions_of(output).problems]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- personal data -----------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}(?!\w)")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_NOT_DIGIT = re.compile(r"\D")


def _has_email(text: str) -> bool:
    return _EMAIL.search(text) is not None


def _has_phone(text: str) -> bool:
    """A number written like a phone number: 7 to 15 digits, with a ``+`` prefix or
    separators (a bare run of digits is more often an order or ticket number), not a date."""
    for match in _PHONE.finditer(text):
        number = match.group()
        digits = _NOT_DIGIT.sub("", number)
        written_as_phone = number.startswith("+") or digits != number
        if 7 <= len(digits) <= 15 and written_as_phone and not _DATE.fullmatch(number):
            return True
    return False


def _has_card(text: str) -> bool:
    """13 to 19 digits (spaces or dashes between) that pass the Luhn check."""
    return any(luhn(_NOT_DIGIT.sub("", m.group())) for m in _CARD.finditer(text))


def luhn(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum of payment card numbers."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return bool(digits) and total % 10 == 0


_FINDERS: dict[str, Callable[[str], bool]] = {
    "email": _has_email, "phone": _has_phone, "card": _has_card}


# -- helpers -----------------------------------------------------------------------


def _at(output: Any, path: str | None) -> Any:
    return output if path is None else get_path(output, path)


def _where(path: str | None) -> str:
    return "output" if path in (None, "", "$") else f"output.{path.removeprefix('$.')}"


def _leaves(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every string (and integer: a card number may be one) inside a JSON value."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, int) and not isinstance(value, bool):
        yield where, str(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}.{i}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _json(value)


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return str(value)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def _exception(exc: Exception) -> str:
    return _short(f"{type(exc).__name__}: {exc}")
