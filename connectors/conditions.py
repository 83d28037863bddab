"""Record filters: the ``when:`` of a mapping, and its evaluation.

A change stream carries creates, updates and deletes in one envelope; ``when``
says which of its records are events (or outcomes). A record of an event
source that fails ``mapping.events.when`` is skipped, not dead-lettered; so is
a record of an outcome source that fails ``mapping.outcomes.when``::

    when:
      and:
        - {path: payload.op, equals: u}
        - {changed: [stage, owner], before: payload.before, after: payload.after}

Forms, one per condition:

- ``{path: P, equals: V}``, ``not_equals``, ``in: [V, ...]``: the value at the
  dotted path ``P`` is (not) ``V``, or one of the list. JSON types are kept
  apart: ``true`` is not ``1``, ``"1"`` is not ``1``. A missing path equals
  nothing, so ``not_equals`` holds for it.
- ``{path: P, present: true}``: the value at ``P`` exists and is not null
  (``false``: it is absent or null), as the mapping treats null.
- ``{path: P, gt: N}``, ``ge``, ``lt``, ``le``: the value is a JSON number and
  compares so; a string, even ``"12"``, never does.
- ``{changed: [F, ...], before: B, after: A}``: at least one of the fields
  (dotted paths inside the objects at ``B`` and ``A``) differs between the two;
  absent and null count as the same.
- ``{and: [C, ...]}``, ``{or: [C, ...]}``, ``{not: C}``.

:func:`compile_condition` turns a :class:`Condition` into a closure once, so a
record costs a few dictionary lookups; the closure never raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictBool, model_validator

from shadow.core.paths import MISSING, get_path
from shadow.core.spec import Spec

Predicate = Callable[[dict[str, Any]], bool]
"""A compiled condition: true when the record passes."""

_TESTS = ("equals", "not_equals", "in_", "present", "gt", "ge", "lt", "le")
_FORMS = ("path", "changed", "all_of", "any_of", "not_")
_NAMES = {"in_": "in", "all_of": "and", "any_of": "or", "not_": "not"}


def _number(value: Any) -> Any:
    if type(value) not in (int, float):
        raise ValueError(f"expected a number, got {value!r}")
    return value


Number = Annotated[float, BeforeValidator(_number)]


class Condition(Spec):
    """One condition on a raw record (see the module's docstring for the forms).

    Raises (at load, as a configuration error naming the key):
        ValueError: no form or more than one, a path without exactly one test,
            a test without a path, ``changed`` without ``before`` and ``after``.
    """

    path: str | None = Field(None, min_length=1)
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(None, alias="in")
    present: StrictBool | None = None
    gt: Number | None = None
    ge: Number | None = None
    lt: Number | None = None
    le: Number | None = None
    changed: list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    before: str | None = None
    after: str | None = None
    all_of: list[Condition] | None = Field(None, alias="and", min_length=1)
    any_of: list[Condition] | None = Field(None, alias="or", min_length=1)
    not_: Condition | None = Field(None, alias="not")

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        given = self.model_fields_set
        forms = [name for name in _FORMS if name in given]
        tests = [name for name in _TESTS if name in given]
        if not forms and tests:
            raise ValueError(f"{_NAMES.get(tests[0], tests[0])}: needs a path")
        if len(forms) != 1:
            shown = ", ".join(_NAMES.get(name, name) for name in _FORMS)
            raise ValueError(f"expected exactly one of {shown}; got {_listed(forms)}")
        form = forms[0]
        if getattr(self, form) is None:
            raise ValueError(f"{_NAMES.get(form, form)}: expected a value, got None")
        ends = [name for name in ("before", "after") if name in given]
        if form != "path" and tests:
            raise ValueError(f"{_NAMES.get(tests[0], tests[0])}: needs a path")
        if form != "changed" and ends:
            raise ValueError(f"{ends[0]}: applies to changed only")
        if form == "path" and len(tests) != 1:
            raise ValueError(f"path {self.path!r}: expected exactly one test of equals, "
                             f"not_equals, in, present, gt, ge, lt, le; got {_listed(tests)}")
        if form == "path" and tests[0] not in ("equals", "not_equals") \
                and getattr(self, tests[0]) is None:
            raise ValueError(f"{_NAMES.get(tests[0], tests[0])}: expected a value, got None")
        if form == "changed" and (self.before is None or self.after is None):
            raise ValueError("changed: needs both before and after, the paths of the two "
                             "objects to compare")
        return self


def _listed(names: list[str]) -> str:
    return ", ".join(_NAMES.get(name, name) for name in names) or "none"


def compile_condition(condition: Condition) -> Predicate:
    """The condition as a closure over a record; built once, called per record."""
    given = condition.model_fields_set
    if condition.all_of is not None:
        parts = tuple(compile_condition(c) for c in condition.all_of)
        return lambda record: all(part(record) for part in parts)
    if condition.any_of is not None:
        parts = tuple(compile_condition(c) for c in condition.any_of)
        return lambda record: any(part(record) for part in parts)
    if condition.not_ is not None:
        inner = compile_condition(condition.not_)
        return lambda record: not inner(record)
    if condition.changed is not None:
        assert condition.before is not None and condition.after is not None
        return _changed(condition.changed, condition.before, condition.after)
    path = condition.path
    assert path is not None
    test = next(name for name in _TESTS if name in given)
    check = _test(test, getattr(condition, test))
    return lambda record: check(get_path(record, path))


def _test(name: str, expected: Any) -> Callable[[Any], bool]:
    """The test of one value found at a path (:data:`MISSING` when it is not there)."""
    if name == "equals":
        return lambda value: _same(value, expected)
    if name == "not_equals":
        return lambda value: not _same(value, expected)
    if name == "in_":
        return _one_of(expected)
    if name == "present":
        return lambda value: (value is not MISSING and value is not None) is expected
    bound = float(expected)
    compare: Callable[[float, float], bool] = {
        "gt": float.__gt__, "ge": float.__ge__, "lt": float.__lt__, "le": float.__le__,
    }[name]
    return lambda value: type(value) in (int, float) and compare(float(value), bound)


def _same(value: Any, expected: Any) -> bool:
    """JSON equality: a boolean equals only a boolean (Python has ``True == 1``)."""
    if type(value) is bool or type(expected) is bool:
        return type(value) is type(expected) and value == expected
    return bool(value == expected)


_SCALARS = (str, int, float, bool, type(None))


def _one_of(options: list[Any]) -> Callable[[Any], bool]:
    if all(type(option) in _SCALARS for option in options):
        # Tagged so that a set lookup keeps booleans apart from 0 and 1.
        table = frozenset((type(option) is bool, option) for option in options)
        return lambda value: (type(value) in _SCALARS
                              and (type(value) is bool, value) in table)
    return lambda value: any(_same(value, option) for option in options)


def _changed(fields: list[str], before: str, after: str) -> Predicate:
    def changed(record: dict[str, Any]) -> bool:
        old, new = get_path(record, before), get_path(record, after)
        return any(not _same(_known(get_path(old, field)), _known(get_path(new, field)))
                   for field in fields)

    return changed


def _known(value: Any) -> Any:
    return None if value is MISSING else value
