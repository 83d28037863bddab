"""What the control API can ask of a running daemon, and how the CLI finds one.

The daemon implements :class:`Control`; ``shadow/service/api.py`` serves it over
HTTP. Every method may be called from the API server's thread: the daemon
runs the work on its own pipeline thread (the single writer of the store)
and returns the result. Calls that change something are given the name of
the API token they came with (``token``), which the API has checked.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


class Control(Protocol):
    def health(self) -> dict[str, Any]:
        """Liveness: the process answers. Never touches the store, never blocks: it is
        called on the API's event loop."""
        ...

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the store is open, the sources are consuming and no shutdown is under way.

        Never blocks: it is called on the API's event loop, so that it answers while every
        worker waits on the pipeline (a backup, say)."""
        ...

    def rollout_status(self) -> dict[str, Any]:
        """What ``shadow rollout status --format json`` prints (``rollout.views.status_view``).

        Raises:
            ConfigError: no rollout is configured.
        """
        ...

    def rollout_history(self, limit: int | None) -> list[dict[str, Any]]:
        """Transitions, oldest first, as ``AuditRecord.as_dict``."""
        ...

    def rollout_command(self, action: str, *, actor: str, reason: str, token: str,
                        full: bool = False, force: bool = False) -> dict[str, Any]:
        """promote | pause | resume | rollback | restart | abort.

        ``actor`` is who the caller says gives the command; ``token`` the name of the
        token it came with. The audit record keeps both.

        Returns ``{"transition": text, "state": {...}}``.

        Raises:
            rollout.state.Refused: the transition is unsafe or meaningless (HTTP 409).
            ConfigError: unknown action, missing reason, no rollout configured (HTTP 400).
        """
        ...

    def report(self, fmt: str) -> str:
        """The owner report as ``json``, ``markdown`` or ``table`` text."""
        ...

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        """The most recent dead letters (``shadow.reports.summary.recent_dead_letters``)."""
        ...

    def event(self, event_id: str, candidate: str | None) -> dict[str, Any]:
        """What ``shadow show EVENT_ID --format json`` prints (``as_json`` of
        ``shadow.reports.event_view.event_view``), the configuration's ``report.redact``
        paths always redacted; only ``candidate``'s predictions if given.

        Raises:
            shadow.reports.event_view.EventNotFound: no such event (HTTP 404).
            shadow.reports.event_view.PredictionNotFound: ``candidate`` made no prediction
                for it (HTTP 404).
        """
        ...

    def metrics(self) -> str:
        """Prometheus text exposition format."""
        ...

    def reviews(self, limit: int) -> list[dict[str, Any]]:
        """The oldest ``limit`` live proposals without a verdict, with their evidence
        (``shadow.store.verdicts.open_reviews``), as ``api_models.Review`` reads them."""
        ...

    def review_verdict(self, review_id: str, *, verdict: str, output: Any,
                       reviewer: str | None, token: str) -> dict[str, Any]:
        """Store a reviewer's verdict (``reviewer`` defaults to ``token``, the name of the
        token it came with) and publish what it lets through; the review's verdict as
        ``api_models.ReviewVerdict`` reads it (the same verdict again is answered alike).

        Raises:
            shadow.store.verdicts.VerdictRefused: an unknown review (HTTP 404), one with
                another verdict or withdrawn (HTTP 409), an edit without output (HTTP 400).
        """
        ...

    def backup(self, name: str, *, token: str) -> dict[str, Any]:
        """Copy the store to the new file ``name`` in the daemon's backup folder
        (``daemon.jobs.backup_dir``); ``Backup.as_dict`` of the copy.

        Raises:
            ConfigError: ``name`` is not a plain file name (HTTP 400).
            shadow.store.backup.BackupExists: the folder has a file of that name (HTTP 409).
        """
        ...


@dataclass(frozen=True, slots=True)
class DaemonFile:
    """Written next to the store while a daemon runs it: how the CLI finds the API.

    The token is never written here; clients read it from the environment.
    """

    pid: int
    api: str
    """Base URL of the control API, e.g. ``http://127.0.0.1:8787``."""
    store: str
    started_at: str
    token_env: str = "SHADOW_API_TOKEN"
    """The name (never the value) of the environment variable the CLI reads its token from."""

    @staticmethod
    def path_for(store: Path) -> Path:
        return store.with_name(store.name + ".daemon.json")

    def write(self, store: Path) -> None:
        path = self.path_for(store)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, store: Path) -> DaemonFile | None:
        """The file of a daemon that is still alive, else ``None`` (a stale file is ignored).

        Alive means holding the store's lock (:class:`DaemonLock`), not having a pid that
        answers: after a SIGKILL in a container the next daemon is pid 1 again, and any
        process may get a dead daemon's pid.
        """
        try:
            data = json.loads(cls.path_for(store).read_text(encoding="utf-8"))
            found = cls(pid=int(data["pid"]), api=str(data["api"]), store=str(data["store"]),
                        started_at=str(data["started_at"]),
                        token_env=str(data.get("token_env", "SHADOW_API_TOKEN")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return found if DaemonLock.held(store) else None

    @classmethod
    def remove(cls, store: Path) -> None:
        cls.path_for(store).unlink(missing_ok=True)


class DaemonLock:
    """An exclusive ``flock`` on ``STORE.daemon.lock``, held while a daemon runs the store.

    The kernel drops it when the process ends, however it ends, so a daemon killed
    with SIGKILL leaves no lock behind; the file itself stays and is reused.
    """

    def __init__(self, store: Path) -> None:
        self.path = store.with_name(store.name + ".daemon.lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; ``False`` when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    @staticmethod
    def held(store: Path) -> bool:
        """Whether some process holds the lock of ``store`` now."""
        path = store.with_name(store.name + ".daemon.lock")
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
