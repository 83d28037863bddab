"""Structured logs on stderr: key-value for people, JSON lines for collectors."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping, Sequence
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"authorization|api[-_]?key|token|secret|password|cookie",
                         re.IGNORECASE)


def configure_default() -> None:
    """Warnings and errors to stderr, unless the application configured structlog.

    structlog's own default prints every level to stdout, which would mix
    log lines into a report written there.
    """
    if not structlog.is_configured():
        configure()


class Redact:
    """A structlog processor: secrets by key name anywhere, and configured fields.

    ``fields`` are dotted paths into a log record, e.g. ``payload.requester.email``.
    """

    def __init__(self, fields: Sequence[str] = ()) -> None:
        self.fields = [f.split(".") for f in fields]

    def __call__(self, logger: Any, method: str, record: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
        # Copies, never edits: a record may hold a live payload of the pipeline's.
        clean: dict[str, Any] = _scrub(record)
        for path in self.fields:
            _blank(clean, path)
        return clean


def _blank(node: Any, path: list[str]) -> None:
    for part in path[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict) and path[-1] in node:
        node[path[-1]] = REDACTED


def _scrub(node: Any) -> Any:
    """A copy of the containers, with values under secret-looking keys replaced."""
    if isinstance(node, MutableMapping):
        return {key: REDACTED if isinstance(key, str) and _SECRET_KEY.search(key)
                else _scrub(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_scrub(v) for v in node]
    return node


def configure(*, level: str = "warning", fmt: str = "console",
              redact: Sequence[str] = ()) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            Redact(redact),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
