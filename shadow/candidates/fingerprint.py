"""Fingerprints: the version of a candidate whose configuration names none.

A rollout restarts from shadow when its candidate's version changes
(:meth:`rollout.controller.Controller.sync`). A candidate configured without a
``version`` (a callable: and without a module ``__version__``) is versioned by
what determines its answers instead: ``fp-`` and the first 12 hex digits of the
SHA-256 of a canonical JSON (sorted keys, no spaces) of the fields below. So a
new model, URL, prompt or schema restarts the rollout, and a new timeout does not.

Field by field (:mod:`shadow.config.candidates`):

- every kind, in: ``kind``, ``confidence_path``, ``abstain_below``, ``checks``
  (they decide which outputs are abstentions and which live decisions are
  published);
- ``callable``, in: the ``module:function`` reference and the SHA-256 of the
  function's source (``inspect.getsource``), or the reference alone when there
  is no source to read (a builtin, a callable object, a module without files);
- ``http``, in: ``url``, ``body``, ``output_path``, and ``headers`` as written
  (a ``${NAME}`` reference, never the variable's value) except credentials;
- ``chat``, in: ``base_url``, ``model``, ``system``, ``user``, ``json_schema``,
  ``output``, ``temperature``, ``max_tokens``, and ``headers`` as for http;
- out: ``name`` (a label), ``version`` (an explicit one is used as it is),
  ``timeout_s``, ``concurrency``, ``retry``, ``breaker``, ``batch_size`` and
  ``workers`` (when, how often and where a call is made, not what it
  answers), ``prices`` (what a call is charged), and ``api_key_env`` and the headers named like a
  credential (authorization, api-key, token, secret, password): who calls, not
  what answers. No environment variable is ever read.

Values equal to their defaults are left out, so writing a default out does not
change the fingerprint, nor does a later release that adds an option whose
default keeps today's behaviour. Header names are compared lower-cased, as HTTP
does. Only the callable's own source is hashed: a change in a helper it calls,
or in a model file it loads, needs an explicit ``version``.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import orjson

from shadow.config.candidates import CallableCandidateSpec, RemoteSpec, is_credential_header

PREFIX = "fp-"
DIGITS = 12

NOT_BEHAVIOUR = frozenset({
    "name", "version", "timeout_s", "concurrency", "retry", "breaker", "batch_size", "workers",
    "prices", "api_key_env", "headers",
})
"""Spec fields left out as they are; ``headers`` comes back without its credentials."""


def fingerprint(spec: CallableCandidateSpec | RemoteSpec, *, source: str | None = None) -> str:
    """The version a candidate without one gets: ``fp-`` and 12 hex digits.

    ``source`` is a callable's source text (:func:`source_of`); ignored for
    remote candidates. The same spec gives the same fingerprint in every
    process and on every machine.

    >>> from shadow.config.candidates import CallableCandidateSpec
    >>> fingerprint(CallableCandidateSpec(callable="triage:classify"))
    'fp-...'
    >>> a = fingerprint(CallableCandidateSpec(callable="triage:classify", name="a"))
    >>> a == fingerprint(CallableCandidateSpec(callable="triage:classify", name="b"))
    True
    """
    text = orjson.dumps(behaviour(spec, source=source), option=orjson.OPT_SORT_KEYS)
    return PREFIX + hashlib.sha256(text).hexdigest()[:DIGITS]


def behaviour(spec: CallableCandidateSpec | RemoteSpec, *, source: str | None = None
              ) -> dict[str, Any]:
    """What the fingerprint is computed from, as JSON-ready data (see the module docstring)."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                                           exclude=set(NOT_BEHAVIOUR))
    if isinstance(spec, CallableCandidateSpec):
        data["kind"] = spec.kind
        data["callable"] = spec.callable
        if source is not None:
            data["source_sha256"] = hashlib.sha256(source.encode()).hexdigest()
    else:
        headers = {name.lower(): value for name, value in spec.headers.items()
                   if not is_credential_header(name)}
        if headers:
            data["headers"] = headers
    return data


def source_of(function: Callable[..., Any]) -> str | None:
    """The source text of ``function`` (unwrapping decorators), or None when there is none."""
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return None
