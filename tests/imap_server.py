"""The IMAP server the tests use: Dovecot, started by scripts/imap-local.

A session's server is shared (each test logs in as a user of its own, whose mailbox
Dovecot creates at first login); a test that restarts the server takes one of its
own. When Dovecot is missing, IMAP tests skip with the reason locally; with
SHADOW_REQUIRE_IMAP=1 (as CI sets it) they fail instead.

The helpers act as the person at the mailbox does, over IMAP with IMAPClient:
deliver (APPEND), move, set and clear flags and keywords.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, NoReturn

import pytest
from imapclient import IMAPClient  # type: ignore[import-untyped]

from tests.kafka import free_port_pair

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "imap-local"
PASSWORD = "secret"
OAUTH_USER, OAUTH_TOKEN = "oauth@example.com", "oauth-token-for-tests"


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("SHADOW_REQUIRE_IMAP") == "1":
        pytest.fail(f"an IMAP server is required (SHADOW_REQUIRE_IMAP=1), but {reason}")
    pytest.skip(f"no IMAP server: {reason}")


@dataclass
class ImapServer:
    """A running Dovecot: IMAPS on ``port``, IMAP with STARTTLS on ``port + 1``."""

    run: Path
    port: int
    host: str = "127.0.0.1"
    capability: str | None = None
    """What the server announces after login instead of Dovecot's own capabilities."""

    @property
    def ca_file(self) -> Path:
        return self.run / "cert.pem"

    @property
    def plain_port(self) -> int:
        return self.port + 1

    def env(self) -> dict[str, str]:
        return {**os.environ, "SHADOW_IMAP_RUN": str(self.run),
                "SHADOW_IMAP_PORT": str(self.port), "SHADOW_IMAP_TOKEN": OAUTH_TOKEN,
                "SHADOW_IMAP_CAPABILITY": self.capability or ""}

    def script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                              timeout=120, check=False, env=self.env())

    def start(self) -> None:
        started = self.script("start")
        if started.returncode != 0:
            unavailable(f"{SCRIPT.name} start failed: {started.stderr.strip()[-500:]}")

    def stop(self, *, keep_data: bool = False) -> None:
        self.script("stop", *(["--keep-data"] if keep_data else []))

    def client(self, user: str) -> IMAPClient:
        """A client logged in as ``user`` (a new user gets an empty mailbox)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        client = IMAPClient(self.host, port=self.port, ssl=True, ssl_context=context,
                            timeout=10)
        client.login(user, PASSWORD)
        return client


WITHOUT_CONDSTORE = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE UNSELECT CHILDREN "
                     "NAMESPACE UIDPLUS MOVE SPECIAL-USE LITERAL+")
"""Dovecot's capabilities less CONDSTORE, QRESYNC and the extensions the source does not
use: a server like Exchange Online, which announces no CONDSTORE."""


def _server(capability: str | None = None) -> Iterator[ImapServer]:
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        unavailable("dovecot is not installed (Debian: apt-get install dovecot-imapd)")
    # Directly under the temporary folder, not pytest's: Dovecot's mail processes run
    # as its own user when the tests run as root, and must get through every folder.
    run = Path(tempfile.mkdtemp(prefix="shadow-imap-"))
    server = ImapServer(run, free_port_pair(), capability=capability)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="session")
def imap_server() -> Iterator[ImapServer]:
    """A Dovecot server for the whole session; take a fresh user per test."""
    yield from _server()


@pytest.fixture
def own_imap_server() -> Iterator[ImapServer]:
    """A Dovecot server for one test, which may stop and start it."""
    yield from _server()


@pytest.fixture
def imap_server_without_condstore() -> Iterator[ImapServer]:
    """A Dovecot server for one test that does not announce CONDSTORE (nor QRESYNC)."""
    yield from _server(WITHOUT_CONDSTORE)


@pytest.fixture
def mailbox_user() -> str:
    """A user of its own on the server: an empty mailbox with INBOX, Sent and Archive."""
    return f"support-{uuid.uuid4().hex[:10]}@example.com"


class Mailbox:
    """A person's client for one mailbox: delivers mail, files it, replies."""

    def __init__(self, server: ImapServer, user: str) -> None:
        self.server, self.user = server, user
        self.client = server.client(user)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.client.logout()

    def create(self, folder: str) -> None:
        if not self.client.folder_exists(folder):
            self.client.create_folder(folder)

    def deliver(self, message: EmailMessage | bytes, folder: str = "INBOX",
                flags: Sequence[str] = ()) -> int:
        """APPEND ``message`` to ``folder``; returns its UID there."""
        raw = message if isinstance(message, bytes) else message.as_bytes()
        answer = self.client.append(folder, raw, flags=[f.encode() for f in flags])
        return _appended_uid(answer)

    def uid_of(self, folder: str, message_id: str) -> int:
        self.client.select_folder(folder)
        found = self.client.search(["HEADER", "Message-ID", message_id])
        assert len(found) == 1, f"{message_id} is {len(found)} times in {folder}"
        return int(found[0])

    def move(self, message_id: str, source: str, target: str) -> None:
        """Move a message as a person does (IMAP MOVE)."""
        uid = self.uid_of(source, message_id)
        self.client.move([uid], target)

    def add_keywords(self, folder: str, message_id: str, keywords: Sequence[str]) -> None:
        uid = self.uid_of(folder, message_id)
        self.client.add_flags([uid], [k.encode() for k in keywords])

    def remove_flags(self, folder: str, message_id: str, flags: Sequence[str]) -> None:
        """Clear flags or keywords (``\\Flagged``, ``refund``) of a message."""
        uid = self.uid_of(folder, message_id)
        self.client.remove_flags([uid], [f.encode() for f in flags])

    def highestmodseq(self, folder: str) -> int:
        """The folder's HIGHESTMODSEQ (CONDSTORE), as the server reports it."""
        status = self.client.folder_status(folder, [b"HIGHESTMODSEQ"])
        return int(status[b"HIGHESTMODSEQ"])

    def recreate(self, folder: str) -> None:
        """Delete ``folder`` and make it again, holding the same messages: the server
        gives it a new UIDVALIDITY (as after a restore, or a rebuilt index)."""
        self.client.select_folder(folder, readonly=True)
        uids = self.client.search()
        fetched = self.client.fetch(uids, [b"BODY.PEEK[]", b"FLAGS"]) if uids else {}
        self.client.unselect_folder()
        self.client.delete_folder(folder)
        self.client.create_folder(folder)
        for uid in sorted(fetched):
            flags = [f for f in fetched[uid][b"FLAGS"] if f != b"\\Recent"]
            self.client.append(folder, fetched[uid][b"BODY[]"], flags=flags)

    def uidvalidity(self, folder: str) -> int:
        return int(self.client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])


def _appended_uid(answer: Any) -> int:
    """The UID of an APPEND's ``[APPENDUID validity uid]`` answer (UIDPLUS)."""
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    words = text.replace("[", " ").replace("]", " ").split()
    return int(words[words.index("APPENDUID") + 2])
