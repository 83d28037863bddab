"""The CLI's side of the control API: find a running daemon and ask it.

Standard library only (``urllib.request``): the CLI makes a handful of calls
and must not wait on an event loop to print a status. Proxies from the
environment are ignored, since the daemon is on this machine.

    client = find_daemon(Path("shadow.duckdb"))
    if client is not None:
        print(client.rollout_status()["status"])
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from rollout.state import Refused
from shadow.core.errors import ConfigError, ShadowError
from shadow.service.control import DaemonFile

if TYPE_CHECKING:
    from shadow.store.database import Store

TOKEN_ENV = "SHADOW_API_TOKEN"
T = TypeVar("T")


class DaemonUnavailable(ShadowError):
    """Nothing listens at the daemon's address: no request reached it, so none took effect."""


class DaemonClient:
    """Calls of :class:`~shadow.service.control.Control`, made over the daemon's HTTP API.

    Raises (from every call):
        DaemonUnavailable: the connection was refused.
        ConfigError: the token was refused (401/403: unknown, or without the scope the
            call needs), or the request was (400/404).
        rollout.state.Refused: a command the rollout refused (409); nothing changed.
        ShadowError: anything else: a timeout, a dropped connection, a 5xx answer.
    """

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 10.0,
                 token_env: str = TOKEN_ENV) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"daemon API: {base_url!r} is not an http(s) URL")
        if timeout_s <= 0:
            raise ConfigError("daemon API: timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._token, self.token_env = token, token_env
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/health"))

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        status, _, body = self._request("GET", "/ready", accept=(200, 503))
        data = orjson.loads(body)
        return status == 200, dict(data.get("checks", {}))

    def rollout_status(self) -> dict[str, Any]:
        return dict(self._json("GET", "/rollout"))

    def rollout_history(self, limit: int | None = None) -> list[dict[str, Any]]:
        query = {} if limit is None else {"limit": limit}
        return list(self._json("GET", "/rollout/history", query=query))

    def rollout_command(self, action: str, *, actor: str, reason: str | None = None,
                        full: bool = False, force: bool = False) -> dict[str, Any]:
        """``{"transition": text, "state": {...}}``; see ``Control.rollout_command``."""
        body: dict[str, Any] = {"actor": actor, "full": full, "force": force}
        if reason is not None:
            body["reason"] = reason
        path = "/rollout/" + urllib.parse.quote(action, safe="")
        return dict(self._json("POST", path, body=body))

    def report(self, fmt: str = "json") -> str:
        """The owner report as ``json``, ``markdown`` or ``table`` text."""
        _, _, body = self._request("POST", "/reports", body={"format": fmt})
        return body.decode("utf-8")

    def dead_letters(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self._json("GET", "/dead-letters", query={"limit": limit})["dead_letters"])

    def event(self, event_id: str, candidate: str | None = None) -> dict[str, Any]:
        """The event with its predictions, requests and tool calls, redacted; see
        ``Control.event``.

        Raises:
            ConfigError: the daemon's store has no such event, or no prediction of
                ``candidate`` for it (404).
        """
        query = {} if candidate is None else {"candidate": candidate}
        path = "/events/" + urllib.parse.quote(event_id, safe="")
        return dict(self._json("GET", path, query=query))

    def metrics(self) -> str:
        return self._request("GET", "/metrics")[2].decode("utf-8")

    def backup(self, name: str, *, timeout_s: float = 3600.0) -> dict[str, Any]:
        """``Backup.as_dict`` of a copy named ``name`` in the daemon's backup folder; a large
        store takes a while, hence the timeout.

        Raises:
            BackupExists: the folder has a file of that name (409).
        """
        from shadow.store.backup import BackupExists

        try:
            answer = self._request("POST", "/backup", body={"name": name}, timeout_s=timeout_s)
        except Refused as exc:
            raise BackupExists(str(exc)) from None
        return dict(orjson.loads(answer[2]))

    # -- transport ------------------------------------------------------------------

    def _json(self, method: str, path: str, *, body: dict[str, Any] | None = None,
              query: Mapping[str, Any] | None = None) -> Any:
        return orjson.loads(self._request(method, path, body=body, query=query)[2])

    def _request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                 query: Mapping[str, Any] | None = None,
                 accept: tuple[int, ...] = (200,),
                 timeout_s: float | None = None) -> tuple[int, str, bytes]:
        url = self.base_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        timeout = timeout_s or self.timeout_s
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, response.headers.get_content_type(), response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if exc.code in accept:
                return exc.code, exc.headers.get_content_type(), raw
            raise _translate(exc.code, raw, f"{method} {path}", self.token_env,
                             exc.headers.get("WWW-Authenticate", "")) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason, timeout) from exc
        except (OSError, HTTPException) as exc:  # timeouts and drops after sending
            raise self._unreachable(exc, timeout) from exc

    def _unreachable(self, reason: object, timeout_s: float) -> ShadowError:
        where = f"the daemon's API at {self.base_url}"
        if isinstance(reason, ConnectionRefusedError):
            return DaemonUnavailable(f"{where} refuses connections")
        if isinstance(reason, TimeoutError):
            return ShadowError(f"{where} did not answer within {timeout_s:g} s; "
                               f"the command may or may not have taken effect")
        return ShadowError(f"{where} failed: {reason}")


def _translate(status: int, raw: bytes, call: str, token_env: str,
               challenge: str = "") -> ShadowError:
    try:
        message = str(orjson.loads(raw)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = raw.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"
    if status == 403 and "insufficient_scope" in challenge:
        return ConfigError(f"the daemon's API refused: {message}; set {token_env} to a token "
                           f"with that scope")
    if status in (401, 403):
        return ConfigError(f"the daemon's API refused the token: set {token_env} to one of "
                           f"the daemon's tokens ({message})")
    if status == 409:
        return Refused(message)
    if status in (400, 404, 422):
        return ConfigError(message)
    return ShadowError(f"the daemon's API answered {status} to {call}: {message}")


def find_daemon(store: Path, *, token_env: str | None = None,
                environ: Mapping[str, str] = os.environ,
                timeout_s: float = 10.0) -> DaemonClient | None:
    """A client of the daemon running ``store``, or ``None`` when none runs it.

    The token is read from the environment variable ``token_env``: the
    configuration's ``daemon.api.token_env`` where the command has one, else
    the variable the running daemon says it uses.

    Raises:
        ConfigError: a daemon runs the store but the token variable is not set.
    """
    found = DaemonFile.read(store)
    if found is None:
        return None
    token_env = token_env or found.token_env
    token = environ.get(token_env, "").strip()
    if not token:
        raise ConfigError(
            f"a running daemon (pid {found.pid}, {found.api}) owns the store {store}; "
            f"set {token_env} to its API token so this command can go through it")
    return DaemonClient(found.api, token, timeout_s=timeout_s, token_env=token_env)


def from_daemon_or_store(store: Path, ask: Callable[[DaemonClient], T],
                         read: Callable[[Store], T]) -> T:
    """``ask`` the daemon that runs ``store`` (its single writer), else ``read`` the file.

    A daemon whose API refuses connections (starting, stopping, or a stale file
    whose pid was reused) received nothing: the file is read instead.

    Raises:
        ConfigError: a daemon runs the store but ``SHADOW_API_TOKEN`` is not set,
            or it refused the token.
    """
    from shadow.store.database import Store

    daemon = find_daemon(store)
    if daemon is not None:
        try:
            return ask(daemon)
        except DaemonUnavailable:
            pass
    with Store(store, read_only=True) as opened:
        return read(opened)
