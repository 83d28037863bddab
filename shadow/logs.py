"""Structured logs on stderr: key-value for people, JSON lines for collectors."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_default() -> None:
    """Warnings and errors to stderr, unless the application configured structlog.

    structlog's own default prints every level to stdout, which would mix
    log lines into a report written there.
    """
    if not structlog.is_configured():
        configure()


def configure(*, level: str = "warning", fmt: str = "console") -> None:
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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
