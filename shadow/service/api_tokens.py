"""The control API's bearer tokens: each with a name and a scope, checked in constant time.

Tokens come from environment variables (``daemon.api.tokens``), from a file of
hashed tokens (``daemon.api.tokens_file``), or, when neither is configured,
from the single variable ``daemon.api.token_env``, as one token with every
scope. Only SHA-256 digests are kept in memory; a presented token is hashed
and compared with every known digest, so how long a check takes says nothing
about which token, or which part of one, matched.

    tokens = load_tokens(config.daemon.api, base_dir=Path("/etc/shadow"))
    found = tokens.find("the presented token")   # an ApiToken, or None

A line of the tokens file (``shadow token NAME --scope SCOPE`` prints one)::

    # name     scope    sha256 of the token, in hex
    prometheus read     9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from shadow.config.daemon import TOKEN_NAME_PATTERN, ApiSpec, Scope
from shadow.core.errors import ConfigError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def digest(token: str) -> bytes:
    """The SHA-256 of a token, as the tokens file holds it (surrounding whitespace ignored).

    A header that is not UTF-8 arrives with its bytes escaped; they are hashed as they came.
    """
    return hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()


def new_token() -> str:
    """A fresh random token: 32 bytes, URL-safe."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token the control API accepts: its name, its scope and the digest of its value."""

    name: str
    scope: Scope
    digest: bytes

    @classmethod
    def of(cls, name: str, scope: Scope, token: str) -> ApiToken:
        """The token whose value is ``token``.

        Raises:
            ConfigError: the value is empty.
        """
        if not token.strip():
            raise ConfigError(f"api: the token {name!r} is empty")
        return cls(name, scope, digest(token))

    def allows(self, needed: Scope) -> bool:
        return self.scope.includes(needed)


class Tokens:
    """The tokens one API accepts; names and values are each distinct.

    Raises:
        ConfigError: no token, two with one name, or two with one value.
    """

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._tokens = tuple(tokens)
        if not self._tokens:
            raise ConfigError("api: a token is required; set SHADOW_API_TOKEN (the CLI needs "
                              "the same value to reach the daemon), or configure "
                              "daemon.api.tokens")
        names: dict[str, ApiToken] = {}
        values: dict[bytes, ApiToken] = {}
        for token in self._tokens:
            if token.name in names:
                raise ConfigError(f"api: two tokens are named {token.name!r}")
            if token.digest in values:
                raise ConfigError(f"api: the tokens {values[token.digest].name!r} and "
                                  f"{token.name!r} have the same value; give each its own")
            names[token.name], values[token.digest] = token, token

    def __iter__(self) -> Iterator[ApiToken]:
        return iter(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def find(self, presented: str) -> ApiToken | None:
        """The token whose value was presented, else ``None``.

        Every known digest is compared, whichever matches: the time taken depends
        on how many tokens there are, never on the presented value.
        """
        wanted = digest(presented)
        found = None
        for token in self._tokens:
            if hmac.compare_digest(wanted, token.digest):
                found = token
        return found


def load_tokens(spec: ApiSpec, *, base_dir: Path,
                environ: Mapping[str, str] = os.environ) -> Tokens:
    """The tokens ``spec`` configures, read from the environment and the tokens file.

    Raises:
        ConfigError: a variable is not set, or the tokens file cannot be read or
            has a malformed line; the message names the setting.
    """
    if spec.single_token:
        value = environ.get(spec.token_env, "")
        if not value.strip():
            raise ConfigError(f"daemon.api.token_env: set the environment variable "
                              f"{spec.token_env} to the bearer token the control API requires")
        return Tokens([ApiToken.of(spec.token_env, Scope.ADMIN, value)])
    found = []
    for i, token in enumerate(spec.tokens):
        value = environ.get(token.env, "")
        if not value.strip():
            raise ConfigError(f"daemon.api.tokens.{i}.env: set the environment variable "
                              f"{token.env} to the token of {token.name!r}")
        found.append(ApiToken.of(token.name, token.granted, value))
    if spec.tokens_file is not None:
        path = Path(spec.tokens_file)
        path = path if path.is_absolute() else base_dir / path
        listed = read_tokens_file(path)
        if not listed and not found:
            raise ConfigError(f"daemon.api.tokens_file: {path} lists no token, and "
                              f"daemon.api.tokens has none either")
        found.extend(listed)
    return Tokens(found)


def read_tokens_file(path: Path) -> list[ApiToken]:
    """The tokens of a file of ``NAME SCOPE SHA256-HEX`` lines (``#`` starts a comment).

    Raises:
        ConfigError: the file cannot be read, others may write it, or a line is
            malformed (the message names the line).
    """
    where = f"daemon.api.tokens_file: {path}"
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror})") from exc
    if mode & stat.S_IWOTH:
        raise ConfigError(f"{where}: any user may write it, and so grant themselves a token; "
                          f"chmod o-w {path}")
    tokens = []
    scopes = ", ".join(s.value for s in Scope)
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise ConfigError(f"{where}, line {number}: expected NAME SCOPE SHA256-HEX, "
                              f"got {len(fields)} field(s)")
        name, scope, hexdigest = fields
        if not re.match(TOKEN_NAME_PATTERN, name):
            raise ConfigError(f"{where}, line {number}: the name {name!r} may have letters, "
                              f"digits and . _ @ + - only, at most 64")
        if scope not in {s.value for s in Scope}:
            raise ConfigError(f"{where}, line {number}: the scope {scope!r} is not one of "
                              f"{scopes}")
        if not _DIGEST.match(hexdigest.lower()):
            raise ConfigError(f"{where}, line {number}: expected the token's SHA-256 as 64 hex "
                              f"digits (shadow token prints it), never the token itself")
        tokens.append(ApiToken(name, Scope(scope), bytes.fromhex(hexdigest)))
    return tokens


def tokens_file_line(name: str, scope: Scope, token: str) -> str:
    """The line of the tokens file for ``token``."""
    return f"{name} {scope.value} {digest(token).hex()}"
