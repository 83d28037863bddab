"""One exception hierarchy for the project; library errors are translated at the boundary."""

from __future__ import annotations


class ShadowError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(ShadowError):
    """A configuration or usage mistake; the CLI exits with code 2 and no traceback."""


class StoreError(ShadowError):
    """The DuckDB store cannot be opened, migrated or written."""


class SourceError(ShadowError):
    """A source cannot be read at all (as opposed to one bad record, which is a dead letter)."""


class LoadError(ConfigError):
    """User code named ``module:function`` cannot be imported or is not callable."""


class SinkError(ShadowError):
    """A sink did not accept every live decision it was given; publishing again may repeat some."""


class SignatureError(ShadowError):
    """A webhook delivery is not signed as its source requires; ``reason`` says how.

    The reason never contains the secret or a signature that was expected.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (a client library's may run to many)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
