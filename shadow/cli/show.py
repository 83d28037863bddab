"""``shadow show``: what each candidate answered for one event, and why.

    shadow show EVENT_ID --db shadow.duckdb [--candidate NAME] [--format json]

For governance: the event, then for each candidate's prediction its version, the model
asked for and the one that answered, the output (or error) and violations, the exact
request it sent (table ``requests``: messages after templating, tools offered,
parameters, model; never headers) and the tool calls an agent executed (table
``tool_calls``). With ``--config``, the values at the configuration's ``report.redact``
paths of the event's payload are shown as ``[redacted]`` wherever they appear.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
        shown = event_record(store.db, args.event_id, args.candidate)
    shown = _redacted(shown, redact)
    if args.format == "json":
        print(json.dumps(shown, indent=2, ensure_ascii=False, default=str))
    else:
        print(_text(shown))
    return EXIT_OK


_PREDICTIONS = """
SELECT p.candidate, p.version, p.mode, p.predicted_at, p.model, r.model AS asked_model,
       p.output, p.error_kind, p.error_type, p.error_message, p.violations, p.latency_ms,
       p.status, p.attempts, p.prompt_tokens, p.completion_tokens, p.cost, p.request_hash,
       r.request
FROM predictions p LEFT JOIN requests r USING (request_hash)
WHERE p.event_id = ? AND (? IS NULL OR p.candidate = ?)
ORDER BY p.candidate, p.predicted_at, p.version
"""

_TOOL_CALLS = """
SELECT ordinal, step, call_id, tool, arguments, result, latency_ms, error, problem
FROM tool_calls
WHERE event_id = ? AND candidate = ? AND version IS NOT DISTINCT FROM ?
ORDER BY ordinal NULLS FIRST
"""


def event_record(db: Any, event_id: str, candidate: str | None) -> dict[str, Any]:
    """The event ``event_id`` with its predictions, requests and tool calls, as JSON values.

    Raises:
        ConfigError: the store has no such event, or no prediction of ``candidate`` for it.
    """
    found = db.execute("SELECT event_id, key, occurred_at, payload FROM events "
                       "WHERE event_id = ?", [event_id]).fetchall()
    if not found:
        raise ConfigError(f"EVENT_ID: the store has no event {event_id!r}")
    (ident, key, occurred_at, payload), = found
    cursor = db.execute(_PREDICTIONS, [event_id, candidate, candidate])
    names = [column[0] for column in cursor.description]
    predictions = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    if candidate is not None and not predictions:
        others = sorted({row[0] for row in db.execute(
            "SELECT candidate FROM predictions WHERE event_id = ?", [event_id]).fetchall()})
        raise ConfigError(f"--candidate: event {event_id!r} has no prediction of {candidate!r}"
                          f" (it has: {', '.join(others) or 'none'})")
    for p in predictions:
        for column in ("output", "request"):
            p[column] = None if p[column] is None else json.loads(p[column])
        p["predicted_at"] = p["predicted_at"].isoformat()
        p["violations"] = list(p["violations"] or [])
        calls = db.execute(_TOOL_CALLS, [event_id, p["candidate"], p["version"]])
        call_names = [column[0] for column in calls.description]
        p["tool_calls"] = [_call(dict(zip(call_names, row, strict=True)))
                           for row in calls.fetchall()]
    return {"event": {"event_id": ident, "key": key, "occurred_at": occurred_at.isoformat(),
                      "payload": json.loads(payload)},
            "predictions": predictions}


def _call(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("arguments", "result"):
        row[column] = None if row[column] is None else json.loads(row[column])
    return row


def _redacted(shown: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    if not paths:
        return shown
    from shadow.core.redaction import redact, redact_within

    payload = shown["event"]["payload"]
    return {"event": {**shown["event"], "payload": redact(payload, paths)},
            "predictions": redact_within(shown["predictions"], payload, paths)}


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
