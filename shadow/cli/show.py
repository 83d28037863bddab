"""``shadow show``: what each candidate answered for one event, and why.

    shadow show EVENT_ID --db shadow.duckdb [--candidate NAME] [--format json]

For governance: the event, then for each candidate's prediction its version, the model
asked for and the one that answered, the output (or error) and violations, the exact
request it sent (table ``requests``: messages after templating, tools offered,
parameters, model; never headers) and the tool calls an agent executed (table
``tool_calls``). With ``--config``, the values at the configuration's ``report.redact``
paths of the event's payload are shown as ``[redacted]`` wherever they appear. The view
itself is :mod:`shadow.reports.event_view`, which a daemon's ``GET /events/{event_id}``
answers too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shadow.cli.options import EXIT_OK, existing_store
from shadow.core.errors import ConfigError


def add_show_parser(commands: Any, add_db_and_config: Callable[[argparse.ArgumentParser], None]
                    ) -> None:
    show = commands.add_parser(
        "show", help="one event: each candidate's prediction, the request it sent, its tool calls",
        description="Print, for the event EVENT_ID, each candidate's prediction with the exact "
        "request it sent (messages after templating, tools, parameters, model) and the tool "
        "calls an agent executed. With --config, the payload fields under report.redact are "
        "shown as [redacted].")
    show.add_argument("event_id", metavar="EVENT_ID", help="the event's id")
    add_db_and_config(show)
    show.add_argument("--candidate", metavar="NAME", help="only this candidate's predictions")
    show.add_argument("--format", choices=("text", "json"), default="text",
                      help="text (default) or json")
    show.set_defaults(handler=_show)


def _show(args: argparse.Namespace) -> int:
    # Imported here, not at the top: parsing the command line (`shadow --help`) needs none.
    from shadow.reports.event_view import event_view
    from shadow.reports.values import as_json
    from shadow.store.database import Store

    redact: list[str] = []
    db = args.db
    if args.config is not None:
        from shadow.config.file import load_config

        config = load_config(args.config)
        redact = list(config.report.redact)
        db = db if db is not None else config.store.path
    if db is None:
        raise ConfigError("--db is required (or set SHADOW_DB, or store.path in --config)")
    with Store(existing_store(Path(db)), read_only=True) as store:
        view = _named_errors(lambda: event_view(store.db, args.event_id, args.candidate,
                                                redact=redact))
    shown: dict[str, Any] = as_json(view)
    if args.format == "json":
        print(json.dumps(shown, indent=2, ensure_ascii=False, default=str))
    else:
        print(_text(shown))
    return EXIT_OK


def event_record(db: Any, event_id: str, candidate: str | None) -> dict[str, Any]:
    """What ``shadow show --format json`` prints, unredacted
    (:func:`shadow.reports.event_view.event_view` as JSON values).

    Raises:
        ConfigError: the store has no such event, or no prediction of ``candidate`` for it.
    """
    from shadow.reports.event_view import event_view
    from shadow.reports.values import as_json

    record: dict[str, Any] = as_json(_named_errors(lambda: event_view(db, event_id, candidate)))
    return record


T = TypeVar("T")


def _named_errors(read: Callable[[], T]) -> T:
    """``read``, with a missing event or prediction named by the argument that asked for it."""
    from shadow.reports.event_view import EventNotFound, PredictionNotFound

    try:
        return read()
    except EventNotFound as exc:
        raise ConfigError(f"EVENT_ID: {exc}") from None
    except PredictionNotFound as exc:
        raise ConfigError(f"--candidate: {exc}") from None


def _text(shown: dict[str, Any]) -> str:
    event = shown["event"]
    lines = [f"event {event['event_id']}  key {event['key']}  occurred {event['occurred_at']}",
             f"payload: {_json(event['payload'])}"]
    if not shown["predictions"]:
        lines.append("no predictions")
    for p in shown["predictions"]:
        lines += ["", f"candidate {p['candidate']}  version {p['version']}  mode {p['mode']}  "
                      f"predicted {p['predicted_at']}"]
        lines.append(f"  model: asked {p['asked_model'] or '-'}, answered {p['model'] or '-'}"
                     f"; tokens {p['prompt_tokens']}/{p['completion_tokens']}"
                     f"; cost {p['cost']}; latency {p['latency_ms']:.0f} ms")
        if p["error_type"] is not None:
            lines.append(f"  error: {p['error_kind']} {p['error_type']}: {p['error_message']}")
        else:
            lines.append(f"  output: {_json(p['output'])}")
        lines += [f"  violation: {v}" for v in p["violations"]]
        if p["request_hash"] is None:
            lines.append("  request: not kept (not a chat candidate)")
        else:
            lines.append(f"  request sha256:{p['request_hash']}")
            lines += ["    " + line for line in json.dumps(
                p["request"], indent=2, ensure_ascii=False).splitlines()]
        if p["tool_calls"]:
            lines.append("  tool calls executed:")
        for call in p["tool_calls"]:
            head = f"    [{call['ordinal']}] step {call['step']} {call['tool']}"
            lines.append(f"{head}({_json(call['arguments'])})")
            if call["problem"] is not None:
                lines.append(f"        problem: {call['problem']}")
            elif call["error"] is not None:
                lines.append(f"        error: {call['error']}")
            else:
                lines.append(f"        -> {_json(call['result'])}")
    return "\n".join(lines)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
