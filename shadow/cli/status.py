"""``shadow status``: whether the daemon running a store is ready, what it reads, and which
candidate workers a recorder has heard from.

    shadow status --config shadow.yaml [--format json]

It asks the running daemon (``GET /ready``; the API token as for every command that
goes through the daemon). Exit 0 when ready, 1 when it runs but is not ready, 2 when no
daemon runs the store.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from shadow.cli.options import EXIT_FAILURE, EXIT_OK
from shadow.core.errors import ConfigError


def add_status_parser(commands: Any, add_db_and_config: Callable[[argparse.ArgumentParser], None]
                      ) -> None:
    status = commands.add_parser(
        "status", help="is the daemon ready: its sources, and the workers a recorder heard from",
        description="Ask the daemon running the store whether it is ready, which sources are "
        "up or away, and (for shadow run --role recorder) which candidate workers it has "
        "stored records from, and when last. Exit 1 when it is not ready.")
    add_db_and_config(status)
    status.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default) or json")
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shadow.service.api_client import find_daemon

    token_env = None
    db = args.db
    if args.config is not None:
        from shadow.config.file import load_config

        config = load_config(args.config)
        db = config.store_at(args.db)
        token_env = config.daemon.api.token_env
    if db is None:
        raise ConfigError("--config FILE or --db PATH is required (or set SHADOW_CONFIG or "
                          "SHADOW_DB)")
    daemon = find_daemon(Path(db), token_env=token_env)
    if daemon is None:
        raise ConfigError(f"no daemon runs {db}; start it with shadow run")
    ready, checks = daemon.readiness()
    if args.format == "json":
        print(json.dumps({"ready": ready, **checks}, indent=2))
    else:
        print(status_text(ready, checks, now=datetime.now(UTC)))
    return EXIT_OK if ready else EXIT_FAILURE


def status_text(ready: bool, checks: dict[str, Any], *, now: datetime) -> str:
    """The readiness checks as a person reads them."""
    lines = ["ready" if ready else "not ready: " + "; ".join(checks.get("reasons") or [])]
    for source in checks.get("sources") or []:
        state = source["state"]
        if state == "away":
            state += f" since {source['since']}: {source['reason']}"
        lines.append(f"  source {source['name']}: {state}")
    if checks.get("webhooks"):
        lines.append(f"  webhooks at {checks['webhooks']}")
    workers = checks.get("workers") or []
    if workers:
        lines.append(f"workers heard from: {len(workers)}")
    for worker in workers:
        ago = (now - datetime.fromisoformat(worker["last_heard"])).total_seconds()
        lines.append(f"  {worker['name']}: last record stored {max(ago, 0.0):.1f} s ago")
    return "\n".join(lines)
