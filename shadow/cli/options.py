"""What every subcommand's parser shares: the one error style, value types, global options.

Errors, one line on stderr and never a traceback:

- ``shadow: error: …``, exit 2 (:data:`EXIT_USAGE`): what the user must fix before trying
  again: usage, the configuration, a missing or unreadable input (a missing store, a
  directory where a file is expected), a store a running daemon owns;
- ``shadow: failed: …``, exit 1 (:data:`EXIT_FAILURE`): the work itself failed: a store
  that cannot be read or written, a candidate away, a daemon that answered with an error.

Standard library only: it is imported while the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from shadow.cli.program import hint
from shadow.core.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are ``shadow: error: …`` on one line, exit 2.

    Subparsers made with ``add_subparsers`` are of the same class.
    """

    def error(self, message: str) -> NoReturn:
        words = self.prog.split()[1:]  # "shadow rollout history" -> the subcommand's words
        where = f"{' '.join(words)}: " if words else ""
        self.exit(EXIT_USAGE, f"shadow: error: {where}{message} "
                              f"(see {hint(*words, '--help')})\n")


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


class DeprecatedAlias(argparse.Action):
    """An old name of an option: it still works, and says once on stderr what replaced it."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, instead: str,
                 why: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.instead, self.why, self.warned = instead, why, False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if not self.warned:
            self.warned = True
            why = f" ({self.why})" if self.why else ""
            print(f"shadow: warning: {option_string} is deprecated, use {self.instead}{why}",
                  file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--log-level`` and ``--log-format``, accepted before and after the subcommand.

    On the top-level parser (``top``) they default to ``None``; on a subcommand's parser
    they are left out of the namespace unless given, so that they do not hide the value
    given before the subcommand.
    """
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], default=default,
        help="log level (env SHADOW_LOG_LEVEL; default warning, info for run and worker)")
    parser.add_argument(
        "--log-format", choices=["console", "json"], default=default,
        help="log format on stderr (env SHADOW_LOG_FORMAT; default console, for run JSON "
        "unless stderr is a terminal)")


def add_global_options_below(parser: argparse.ArgumentParser) -> None:
    """:func:`add_global_options` on every subcommand's parser under ``parser``, at any depth."""
    # argparse has no public way to list the subparsers; _actions is stable since 3.2.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_global_options(sub, top=False)
                add_global_options_below(sub)


def input_file(path: Path) -> Path:
    """``path``, a file the command reads.

    Raises:
        ConfigError: it does not exist, or is a directory.
    """
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, expected a file")
    if not path.exists():
        raise ConfigError(f"no such file: {path}")
    return path


def existing_store(path: Path) -> Path:
    """``path``, a store that must exist already (to read, or to steer its rollout).

    Raises:
        ConfigError: there is no file there, or it is a directory.
    """
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, expected a store file")
    if not path.exists():
        raise ConfigError(f"no store at {path}")
    return path


def output_directory(path: Path) -> Path:
    """``path``, a directory to write into, made (with its parents) when missing.

    Raises:
        ConfigError: it is a file, or cannot be made (no permission, a file on its way).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{path} is a file, expected a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot make the directory {path}: {exc.strerror}") from None
    return path
