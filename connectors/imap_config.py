"""An :class:`~connectors.imap.ImapSource` made from its ``kind: imap`` configuration.

Secrets are read when the source connects, not here: a password or token from an
environment variable (checked now, so that a daemon without it refuses to start), or
a token printed by a command, run again at every connection since access tokens
expire within the hour.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from connectors.imap import ImapSource, Login, Role, Server, Tls
from connectors.specs import ImapSourceSpec
from shadow.core.errors import ConfigError, SourceError

_COMMAND_TIMEOUT_S = 30.0


def imap_source(spec: ImapSourceSpec, *, role: Role, store_path: Path, base_dir: Path,
                environ: Mapping[str, str], on_arrival: Callable[[], None] | None = None
                ) -> ImapSource:
    """The source ``spec`` describes, reading ``role`` records; nothing connects yet.

    Relative paths (``ca_file``, ``positions``) are taken from ``base_dir``.

    Raises:
        ConfigError: the environment variable holding the password or token is not set.
    """
    tls = Tls(spec.tls)
    port = spec.port or (993 if tls is Tls.IMPLICIT else 143)
    server = Server(spec.host, port, tls, _beside(spec.ca_file, base_dir) if spec.ca_file
                    else None, spec.timeout.total_seconds())
    positions = (_beside(spec.positions, base_dir) if spec.positions is not None
                 else store_path.with_name(f"{store_path.name}.imap-{spec.name}.json"))
    return ImapSource(
        name=spec.name, server=server, login=_login(spec, environ), folders=spec.folders,
        role=role, positions=positions, sent_folder=spec.sent_folder, headers=spec.headers,
        max_message_bytes=spec.max_message_bytes, max_body_chars=spec.max_body_chars,
        poll_interval_s=spec.poll_interval.total_seconds(), idle=spec.idle,
        start_new=spec.start == "new", condstore=spec.condstore,
        flag_window=spec.flag_window, on_arrival=on_arrival)


def _login(spec: ImapSourceSpec, environ: Mapping[str, str]) -> Login:
    variable = spec.password_env or spec.oauth2_token_env
    if variable is not None:
        value = environ.get(variable)
        if not value:
            key = "password_env" if spec.password_env else "oauth2_token_env"
            raise ConfigError(f"sources: imap {spec.name!r} needs the environment variable "
                              f"{variable} ({key}) set")
        return Login(spec.username, lambda: value, oauth2=spec.oauth2_token_env is not None)
    command = spec.oauth2_token_command
    assert command is not None
    return Login(spec.username, lambda: token_from(command), oauth2=True)


def token_from(command: list[str]) -> str:
    """The first line a command prints: an OAuth2 access token.

    Raises:
        SourceError: the command cannot run, fails, or prints nothing.
    """
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=_COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"oauth2_token_command {command[0]!r} did not run: {exc}") from exc
    token = done.stdout.strip().splitlines()[0].strip() if done.stdout.strip() else ""
    if done.returncode != 0 or not token:
        raise SourceError(f"oauth2_token_command {command[0]!r} gave no token (exit "
                          f"{done.returncode}): {done.stderr.strip()[-300:]}")
    return token


def _beside(name: str, base_dir: Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base_dir / path
