"""``shadow send``: one webhook delivery to a running daemon, signed as its vendor would sign it.

    shadow send --config configs/quickstart-daemon.yaml --source tickets ticket.json

The file's bytes are the body, unchanged. They are signed with the scheme and the
secret (from the variable ``secret_env`` names) of the webhook source called
``--source``, and POSTed to the daemon's webhook server, whose answer is printed:
``200 {"status": "stored", ...}``. For trying a configuration out before the
vendor is set up, and for checking a secret.
"""

from __future__ import annotations

import argparse
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadow.core.errors import ConfigError, ShadowError

if TYPE_CHECKING:
    from connectors.specs import WebhookSourceSpec
    from shadow.config.daemon import WebhookServerSpec
    from shadow.config.file import Config

_TIMEOUT_S = 30.0


def add_send_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]
                    ) -> None:
    send = commands.add_parser(
        "send", help="sign a JSON file as a webhook's vendor would and send it to the daemon",
        description="Send FILE, byte for byte, to the running daemon's webhook source NAME, "
        "signed with that source's scheme and the secret in its secret_env variable, and "
        "print the answer. Exits 0 when the daemon answered 2xx, else 1.")
    add_config(send)
    send.add_argument("--source", required=True, metavar="NAME",
                      help="a webhook source's name under sources.events or sources.outcomes")
    send.add_argument("file", type=Path, metavar="FILE", help="the body to send (JSON)")
    send.add_argument("--url", metavar="URL",
                      help="the webhook server's address (default: daemon.webhooks host and "
                      "port, with 127.0.0.1 for 0.0.0.0)")
    send.add_argument("--id", metavar="ID",
                      help="the delivery id, for schemes that carry one (default: a new one; "
                      "the same id twice is stored once)")
    send.set_defaults(handler=_send)


def _send(args: argparse.Namespace) -> int:
    # Imported here, not at the top: parsing the command line (`shadow --help`) needs none.
    from connectors.signing import sign
    from shadow.config.file import load_config
    from shadow.core.models import utc_now

    if args.config is None:
        raise ConfigError("--config is required (or set SHADOW_CONFIG)")
    config = load_config(args.config)
    source = webhook_source(config, args.source)
    secret = None
    if source.secret_env is not None:
        secret = os.environ.get(source.secret_env)
        if not secret:
            raise ConfigError(f"--source {source.name}: set the environment variable "
                              f"{source.secret_env} to its signing secret (secret_env)")
    try:
        body = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from exc
    server = config.daemon.webhooks
    base = (args.url or local_url(server)).rstrip("/")
    # What the daemon checks the signature against: its public URL when it has one.
    signed = (server.public_url or base).rstrip("/") + source.path
    try:
        headers = sign(source.scheme, secret, url=signed, body=body, at=utc_now(),
                       delivery_id=args.id or f"shadow-send-{uuid.uuid4().hex}")
    except ValueError as exc:
        raise ConfigError(f"--source {source.name}: {exc}") from exc
    status, answer = post(base + source.path, body, headers)
    print(f"{status} {answer}")
    return 0 if 200 <= status < 300 else 1


def webhook_source(config: Config, name: str) -> WebhookSourceSpec:
    """The webhook source called ``name``, among the events' and the outcomes'.

    Raises:
        ConfigError: there is none; the message lists the names there are.
    """
    from connectors.specs import WebhookSourceSpec

    hooks = [s for s in [*config.sources.events, *config.sources.outcomes]
             if isinstance(s, WebhookSourceSpec)]
    for hook in hooks:
        if hook.name == name:
            return hook
    raise ConfigError(f"--source {name}: no webhook source of that name; expected one of "
                      f"{[hook.name for hook in hooks]}")


def local_url(server: WebhookServerSpec) -> str:
    """Where the webhook server listens, as a client on this machine reaches it.

    Raises:
        ConfigError: the port is 0 (chosen at start): only ``--url`` can say it.
    """
    if server.port == 0:
        raise ConfigError("daemon.webhooks.port is 0, chosen when the daemon starts: give --url")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{server.port}"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST ``body``; the status and text of the answer, whatever the status.

    Raises:
        ShadowError: nothing answered at ``url``.
    """
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise ShadowError(f"no answer from {url}: {reason}; is `shadow run` running?") from exc
