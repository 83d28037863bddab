"""A shared mailbox (support@, sales@) over IMAP, as a source of events or of outcomes.

*Events*: every new message in the configured folders is one record in the shape the
default mapping reads (``event_id``, ``key``, ``occurred_at``, ``routing_key``,
``segment``, ``payload``): the ``Message-ID`` as event id, the thread as key (see
:mod:`connectors.imap_message`), the payload as :func:`~connectors.imap_message.read_message`
makes it, with ``folder`` and ``uid`` added.

*Outcomes*: what the person did with a thread. A message that arrives in one of the
configured folders was filed there (a move, a copy, a rule): the thread's ``folder``
becomes that folder, its ``flags`` and ``keywords`` the message's (and its Gmail
``labels``, where the server offers ``X-GM-LABELS``); a message in ``sent_folder``
that answers one (``In-Reply-To`` / ``References``) is the thread's ``reply``. Each
record carries everything known of the thread so far, so the latest outcome of a key
(the one compared) is complete; its ``decided_at`` is when the message was saved in
the folder (``SAVEDATE``, else its arrival time) or the reply's ``Date``.

Flags and keywords a person sets or removes on a filed message after the source read
it change the thread too (:mod:`connectors.imap_threads` remembers what each message
had): where the server offers CONDSTORE (RFC 7162), each poll asks a folder for the
messages whose flags changed since the ``HIGHESTMODSEQ`` of the last poll (kept in the
positions); elsewhere, or with ``condstore=False``, it reads the flags of the last
``flag_window`` messages of the folder. A change gives an outcome decided when the
source saw it.

*Delivery*: the source never changes the mailbox (folders are opened read-only,
bodies fetched with ``BODY.PEEK``). Positions are (folder, ``UIDVALIDITY``, UID),
saved by :meth:`ImapSource.commit`, which the pipeline calls after the store has
committed the records (:mod:`connectors.imap_positions`); a folder whose
``UIDVALIDITY`` changed is read again from its start, and the store recognises
what it already holds. New mail is noticed by IDLE on the first folder where the
server supports it (a second connection, in a thread, that wakes the daemon), and
by looking at every folder each ``poll_interval_s``. A connection that fails makes
:meth:`poll` raise :class:`~connectors.base.SourceError`; the daemon's guard retries
it after a backoff while the other sources go on, and the next poll connects again.

IMAPClient's types and errors stay in this module.
"""

from __future__ import annotations

import copy
import enum
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from imapclient import IMAPClient  # type: ignore[import-untyped]
from imapclient.exceptions import IMAPClientError  # type: ignore[import-untyped]

from connectors import imap_threads as threads
from connectors.base import RawRecord, Source
from connectors.imap_message import Message, Undecodable, read_message, thread_of
from connectors.imap_positions import FolderPosition, Positions, Progress
from shadow.core.errors import SourceError, first_line
from shadow.core.retry import RetryPolicy, backoff

log = structlog.get_logger(__name__)

_FAILURES = (IMAPClientError, OSError, ssl.SSLError, socket.timeout, EOFError)
"""What a connection, a login or a command raises when the server or the network fails."""
_FETCH_BYTES = 16 * 1024 * 1024
"""Bodies are fetched in groups of at most this many bytes (or one larger message)."""
_IDLE_JOIN_S = 2.0
_IDLE_RENEW_S = 300.0
"""IDLE is ended and started again this often (RFC 2177 asks for under 29 minutes)."""


class Role(enum.StrEnum):
    EVENTS = "events"
    OUTCOMES = "outcomes"


class Tls(enum.StrEnum):
    IMPLICIT = "implicit"
    """TLS from the first byte (IMAPS, port 993)."""
    STARTTLS = "starttls"
    """Plain connection upgraded with STARTTLS before login (port 143)."""
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Login:
    """Who the source logs in as; ``secret`` is called at every connection (a token
    from a command may have been renewed)."""

    username: str
    secret: Callable[[], str]
    oauth2: bool = False
    """SASL XOAUTH2 with ``secret`` as the access token, else LOGIN with it as password."""


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int
    tls: Tls = Tls.IMPLICIT
    ca_file: Path | None = None
    """The CA certificates to trust; the system's when ``None``."""
    timeout_s: float = 30.0


class ImapSource(Source):
    """New messages of some folders of one mailbox, as events or outcomes.

    ``start_new`` skips the messages a folder already holds when the source first sees
    it (otherwise they are all read). An outcome source follows the flags and keywords
    of the messages it filed with CONDSTORE where the server offers it and ``condstore``
    is true, else through the flags of the last ``flag_window`` messages of each folder
    at every poll (``0``: not at all). ``on_arrival`` is called from the IDLE thread
    when the server announces mail, and each time that thread has (re)connected (mail
    may have come while it was not there). ``poll`` returns at once when nothing is due,
    and otherwise waits for the server at most ``server.timeout_s`` per command.
    """

    def __init__(
        self, *, name: str, server: Server, login: Login, folders: Sequence[str],
        role: Role, positions: Path, sent_folder: str | None = None,
        headers: Sequence[str] = (), max_message_bytes: int = 10 * 1024 * 1024,
        max_body_chars: int = 20_000, poll_interval_s: float = 30.0, idle: bool = True,
        start_new: bool = False, condstore: bool = True, flag_window: int = 500,
        on_arrival: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not folders and not (role is Role.OUTCOMES and sent_folder):
            raise ValueError("an IMAP source needs at least one folder")
        if sent_folder is not None and role is not Role.OUTCOMES:
            raise ValueError("sent_folder is read by outcome sources only")
        if flag_window < 0:
            raise ValueError(f"flag_window must be 0 or more, not {flag_window}")
        self.name = f"imap:{name}"
        self.server, self.login, self.role = server, login, role
        self.folders = list(dict.fromkeys([*folders, *([sent_folder] if sent_folder else [])]))
        self.sent_folder = sent_folder
        self.headers, self.max_message_bytes = list(headers), max_message_bytes
        self.max_body_chars, self.poll_interval_s = max_body_chars, poll_interval_s
        self.idle, self.start_new, self._on_arrival = idle, start_new, on_arrival
        self.condstore, self.flag_window = condstore, flag_window
        self._positions = Positions(positions)
        self._clock, self._now = clock, now
        self._client: Any = None
        self._modseqs = False
        """Whether this connection has CONDSTORE enabled (folders then give HIGHESTMODSEQ)."""
        self._identities: dict[str, tuple[int, dict[int, tuple[str, str] | None]]] = {}
        """Per folder, under its UIDVALIDITY: the (message id, thread) of the UIDs whose
        flags were last looked at, so the flag window fetches their headers once."""
        self._progress = Progress({}, {})
        """What has been handed out: saved as it is by the next commit."""
        self._committed = Progress({}, {})
        """What the positions file holds."""
        self._next_look = 0.0
        self._announced = threading.Event()
        self._stop = threading.Event()
        self._idler: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------

    def _open(self) -> None:
        self._committed = self._positions.load()
        self._progress = copy.deepcopy(self._committed)
        try:
            self._client = self._connect_reader()
        except _FAILURES as exc:
            raise SourceError(f"cannot log in to {self.server.host}:{self.server.port} as "
                              f"{self.login.username}: {first_line(exc)}") from exc
        if self.idle and "IDLE" in self._capabilities():
            self._idler = threading.Thread(target=self._idle_loop, name=f"{self.name} idle",
                                           daemon=True)
            self._idler.start()

    def _close(self) -> None:
        self._stop.set()
        if self._idler is not None:
            # It looks at the stop flag each second; one stuck connecting (a daemon
            # thread) is not waited for: shutting down must not wait for a server.
            self._idler.join(timeout=_IDLE_JOIN_S)
        self._disconnect()

    def commit(self, position: str) -> None:
        """Save the positions (and threads) of every record handed out so far.

        Raises:
            SourceError: the positions file cannot be written; the records are stored,
                and are read again (and recognised) if the source restarts first.
        """
        self._positions.save(self._progress)
        self._committed = copy.deepcopy(self._progress)

    # -- reading ----------------------------------------------------------------

    def _poll(self, max_records: int) -> list[RawRecord]:
        if not self._announced.is_set() and self._clock() < self._next_look:
            return []
        self._announced.clear()
        before = copy.deepcopy(self._progress)
        try:
            if self._client is None:
                self._client = self._connect_reader()
            records, more = self._read(max_records)
        except _FAILURES as exc:
            # Nothing of this poll was handed out: its positions must not be committed.
            self._progress = before
            self._disconnect()
            raise SourceError(f"cannot read {self.folders} at {self.server.host}: "
                              f"{first_line(exc)}") from exc
        if more:
            self._announced.set()
        else:
            self._next_look = self._clock() + self.poll_interval_s
        return records

    def _read(self, max_records: int) -> tuple[list[RawRecord], bool]:
        """Up to ``max_records`` new messages across the folders; and whether more wait."""
        records: list[RawRecord] = []
        for folder in self.folders:
            left = max_records - len(records)
            if left <= 0:
                return records, True
            selected = self._client.select_folder(folder, readonly=True)
            uids, uidvalidity = self._new_uids(folder, selected)
            known = self._progress.folders.get(folder)
            if known is None or known.uidvalidity != uidvalidity:
                known = FolderPosition(uidvalidity, 0)
            if uids[:left]:
                records.extend(self._records(folder, uidvalidity, uids[:left]))
                self._progress.folders[folder] = replace(known, uid=uids[:left][-1])
            if self.role is Role.OUTCOMES and folder != self.sent_folder:
                # What this poll read came with its flags as they are: only the messages
                # read before can have changed.
                records.extend(self._changes(folder, uidvalidity, selected, known.uid))
            if len(uids) > left:
                return records, True
        return records, False

    def _new_uids(self, folder: str, selected: dict[bytes, Any]) -> tuple[list[int], int]:
        client = self._client
        uidvalidity = int(selected[b"UIDVALIDITY"])
        known = self._progress.folders.get(folder)
        if known is None and self.start_new:
            start = FolderPosition(uidvalidity, int(selected.get(b"UIDNEXT", 1)) - 1,
                                   self._highest(selected))
            # Nothing to store, so the start is kept at once (with only what was committed).
            self._progress.folders[folder] = self._committed.folders[folder] = start
            self._positions.save(self._committed)
            return [], uidvalidity
        after = 0
        if known is not None and known.uidvalidity == uidvalidity:
            after = known.uid
        elif known is not None:
            log.warning("UIDVALIDITY changed; reading the folder again", source=self.name,
                        folder=folder, was=known.uidvalidity, now=uidvalidity)
        # "n:*" always matches the last message, even when its UID is below n.
        uids = sorted(uid for uid in client.search(["UID", f"{after + 1}:*"]) if uid > after)
        return uids, uidvalidity

    def _records(self, folder: str, uidvalidity: int, uids: list[int]) -> list[RawRecord]:
        """The records of the messages ``uids`` of the selected ``folder``, in UID order.

        Their sizes, dates and flags come in one FETCH, their bodies in as few as keep
        each under ``_FETCH_BYTES``; a message expunged meanwhile is left out.
        """
        items = [b"RFC822.SIZE", b"INTERNALDATE", b"FLAGS"]
        capabilities = self._capabilities()
        if "SAVEDATE" in capabilities:
            items.append(b"SAVEDATE")
        if "X-GM-EXT-1" in capabilities:
            items.append(b"X-GM-LABELS")
        metas = self._client.fetch(uids, items)
        wanted = [uid for uid in uids if uid in metas
                  and int(metas[uid].get(b"RFC822.SIZE", 0)) <= self.max_message_bytes]
        bodies = self._bodies(wanted, metas)
        records: list[RawRecord] = []
        for uid in uids:
            if uid not in metas:
                continue
            position = f"{folder}@{uidvalidity}:{uid}"
            size = int(metas[uid].get(b"RFC822.SIZE", 0))
            raw = bodies.get(uid)
            if size > self.max_message_bytes:
                records.append(self._dead(folder, uid, position, f"({size} bytes, not fetched)",
                                          f"the message is {size} bytes, over "
                                          f"max_message_bytes ({self.max_message_bytes})"))
            elif raw is not None:
                records.extend(self._record(folder, uid, position, metas[uid], raw))
        return records

    def _bodies(self, uids: list[int], metas: dict[int, Any]) -> dict[int, bytes]:
        bodies: dict[int, bytes] = {}
        chunk: list[int] = []
        size = 0
        for uid in [*uids, None]:
            grown = size + int(metas[uid].get(b"RFC822.SIZE", 0)) if uid is not None else 0
            if chunk and (uid is None or grown > _FETCH_BYTES):
                fetched = self._client.fetch(chunk, [b"BODY.PEEK[]"])
                bodies.update({u: v[b"BODY[]"] for u, v in fetched.items()
                               if isinstance(v.get(b"BODY[]"), bytes)})
                chunk, size = [], 0
            if uid is not None:
                chunk.append(uid)
                size += int(metas[uid].get(b"RFC822.SIZE", 0))
        return bodies

    def _record(self, folder: str, uid: int, position: str, meta: dict[bytes, Any],
                raw: bytes) -> list[RawRecord]:
        try:
            message = read_message(raw, headers=self.headers, max_body_chars=self.max_body_chars)
        except Undecodable as exc:
            return [self._dead(folder, uid, position, raw, str(exc))]
        arrived = _aware(meta.get(b"INTERNALDATE"))
        if self.role is Role.EVENTS:
            return [self._event(message, folder, uid, arrived, position, raw)]
        return self._outcome(message, folder, meta, arrived, position, raw)

    # -- flag and keyword changes -------------------------------------------------

    def _highest(self, selected: dict[bytes, Any]) -> int | None:
        """The selected folder's HIGHESTMODSEQ, when changes can be asked for by it."""
        value = selected.get(b"HIGHESTMODSEQ") if self._modseqs else None
        return int(value) if value is not None else None

    def _changes(self, folder: str, uidvalidity: int, selected: dict[bytes, Any],
                 read_before: int) -> list[RawRecord]:
        """Outcomes of the flags and keywords changed on the messages of the selected
        ``folder`` up to UID ``read_before``: those changed since the last poll's
        HIGHESTMODSEQ, or the last ``flag_window`` messages' without CONDSTORE."""
        known = self._progress.folders.get(folder)
        if known is None or known.uidvalidity != uidvalidity:
            return []
        highest = self._highest(selected)
        if highest is not None:
            # A folder read anew (first seen, new UIDVALIDITY) starts here: the flags of
            # what it read were current.
            self._progress.folders[folder] = replace(known, modseq=highest)
            if known.modseq is None or known.modseq >= highest or read_before < 1:
                return []
            uids = self._client.search(["UID", f"1:{read_before}", "MODSEQ",
                                        str(known.modseq + 1)])
        elif self.flag_window:
            exists = int(selected.get(b"EXISTS", 0))
            if exists == 0 or read_before < 1:
                return []
            uids = self._client.search([f"{max(1, exists - self.flag_window + 1)}:*",
                                        "UID", f"1:{read_before}"])
        else:
            return []
        flags = self._client.fetch(sorted(uids), [b"FLAGS"]) if uids else {}
        identities = self._identify(folder, uidvalidity, sorted(flags))
        records: list[RawRecord] = []
        for uid in sorted(flags):
            identity = identities.get(uid)
            if identity is None:
                continue
            message_id, thread = identity
            mark = threads.marks(flags[uid].get(b"FLAGS", ()))
            value = threads.remarked(self._progress.threads, thread, folder=folder,
                                     message_id=message_id, mark=mark, now=self._now())
            if value is not None:
                records.append(RawRecord(
                    self.name, f"{folder}@{uidvalidity}:{uid} flags",
                    {**value, "actor": self.login.username},
                    {"folder": folder, "uid": uid, "message_id": message_id, **mark}))
        return records

    def _identify(self, folder: str, uidvalidity: int,
                  uids: list[int]) -> dict[int, tuple[str, str] | None]:
        """The (message id, thread) of messages of the selected ``folder``: from their
        header, or from the whole message when it has no ``Message-ID``; ``None`` for one
        that cannot be read. Only the answers for ``uids`` are kept for the next poll."""
        validity, known = self._identities.get(folder, (uidvalidity, {}))
        if validity != uidvalidity:
            known = {}
        missing = [uid for uid in uids if uid not in known]
        heads = self._client.fetch(missing, [b"BODY.PEEK[HEADER]", b"RFC822.SIZE"])
        whole: list[int] = []
        for uid in missing:
            head = heads.get(uid, {}).get(b"BODY[HEADER]")
            try:
                known[uid] = thread_of(head) if isinstance(head, bytes) else None
            except Undecodable:
                known[uid] = None
            if isinstance(head, bytes) and known[uid] is None and int(
                    heads[uid].get(b"RFC822.SIZE", 0)) <= self.max_message_bytes:
                whole.append(uid)
        for uid, raw in self._bodies(whole, heads).items():
            try:
                message = read_message(raw, max_body_chars=1)
            except Undecodable:
                continue
            known[uid] = (message.message_id, message.thread)
        kept = {uid: known.get(uid) for uid in uids}
        self._identities[folder] = (uidvalidity, kept)
        return kept

    def _dead(self, folder: str, uid: int, position: str, raw: bytes | str,
              reason: str) -> RawRecord:
        return RawRecord(self.name, position, None, raw, f"UID {uid} in {folder}: {reason}")

    def _event(self, message: Message, folder: str, uid: int, arrived: datetime | None,
               position: str, raw: bytes) -> RawRecord:
        occurred = message.date or arrived
        value = {
            "event_id": message.message_id, "key": message.thread,
            "occurred_at": occurred.isoformat() if occurred else None,
            "routing_key": message.thread, "segment": {"folder": folder},
            "payload": {**message.payload, "folder": folder, "uid": uid},
        }
        return RawRecord(self.name, position, value, raw)

    def _outcome(self, message: Message, folder: str, meta: dict[bytes, Any],
                 arrived: datetime | None, position: str, raw: bytes) -> list[RawRecord]:
        if folder == self.sent_folder:
            if message.in_reply_to is None and not message.references:
                return []  # a new message the mailbox sent, not a reply
            value = threads.replied(
                self._progress.threads, message.thread, message_id=message.message_id,
                done=message.date or arrived or self._now(), change={"reply": {
                    "message_id": message.message_id, "in_reply_to": message.in_reply_to,
                    "to": message.payload["to"], "subject": message.payload["subject"],
                    "text": message.payload["body"],
                }})
        else:
            change: dict[str, Any] = {"folder": folder,
                                      **threads.marks(meta.get(b"FLAGS", ()))}
            if b"X-GM-LABELS" in meta:
                change["labels"] = sorted(_label(label) for label in meta[b"X-GM-LABELS"])
            value = threads.filed(
                self._progress.threads, message.thread, folder=folder,
                message_id=message.message_id, change=change,
                done=_saved(meta.get(b"SAVEDATE")) or arrived or self._now(), now=self._now())
        if value is None:
            return []  # read again (a UIDVALIDITY change): already part of the thread
        return [RawRecord(self.name, position, {**value, "actor": self.login.username}, raw)]

    # -- connections ------------------------------------------------------------

    def _connect(self) -> Any:
        """A logged-in client; ``_FAILURES`` when the server cannot be reached or refuses."""
        server = self.server
        context = None
        if server.tls is not Tls.NONE:
            context = ssl.create_default_context(
                cafile=str(server.ca_file) if server.ca_file is not None else None)
        client = IMAPClient(server.host, port=server.port, ssl=server.tls is Tls.IMPLICIT,
                            ssl_context=context, timeout=server.timeout_s)
        try:
            if server.tls is Tls.STARTTLS:
                client.starttls(context)
            client.normalise_times = False
            if self.login.oauth2:
                client.oauth2_login(self.login.username, self.login.secret())
            else:
                client.login(self.login.username, self.login.secret())
        except BaseException:
            _quietly(client.shutdown)
            raise
        return client

    def _connect_reader(self) -> Any:
        """A client for :meth:`poll`, with CONDSTORE enabled where it is used."""
        client = self._connect()
        self._client, self._modseqs = client, False
        if (self.role is Role.OUTCOMES and self.condstore
                and {"CONDSTORE", "ENABLE"} <= self._capabilities()):
            self._modseqs = b"CONDSTORE" in [bytes(c).upper()
                                             for c in client.enable("CONDSTORE")]
        return client

    def _capabilities(self) -> set[str]:
        return {c.decode("ascii", "replace").upper() for c in self._client.capabilities()}

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            _quietly(client.logout)
            _quietly(client.shutdown)

    def _idle_loop(self) -> None:
        """Wait in IDLE on the first folder and say when the server announces mail;
        reconnect after a backoff when the connection fails, until the source closes."""
        policy, failures = RetryPolicy(base_s=1.0, max_backoff_s=30.0), 0
        while not self._stop.is_set():
            client = None
            try:
                client = self._connect()
                client.select_folder(self.folders[0], readonly=True)
                failures = 0
                self._announce()  # mail may have come while there was no IDLE connection
                self._idle(client)
            except (*_FAILURES, SourceError) as exc:
                failures += 1
                log.info("IDLE connection failed; the folders are still looked at every "
                         "poll interval", source=self.name, error=first_line(exc))
                self._stop.wait(backoff(policy, failures, random.uniform))
            finally:
                if client is not None:
                    _quietly(client.shutdown)

    def _idle(self, client: Any) -> None:
        # New mail; and, for outcomes, flags changed on a message of the folder.
        wakers = ((b"EXISTS", b"RECENT") if self.role is Role.EVENTS
                  else (b"EXISTS", b"RECENT", b"FETCH"))
        while not self._stop.is_set():
            client.idle()
            renew_at = time.monotonic() + _IDLE_RENEW_S
            announced = False
            while not self._stop.is_set() and not announced and time.monotonic() < renew_at:
                announced = any(len(r) > 1 and r[1] in wakers
                                for r in client.idle_check(timeout=1.0))
            client.idle_done()
            if announced:
                self._announce()

    def _announce(self) -> None:
        self._announced.set()
        if self._on_arrival is not None:
            self._on_arrival()


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)


def _saved(value: Any) -> datetime | None:
    """A ``SAVEDATE`` (RFC 8514), ``NIL`` when the server does not know it."""
    if not isinstance(value, bytes):
        return None
    try:
        return datetime.strptime(value.decode("ascii"), "%d-%b-%Y %H:%M:%S %z").astimezone(UTC)
    except (ValueError, UnicodeDecodeError):
        return None


def _label(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _quietly(call: Callable[[], Any]) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - closing a connection that may be gone
        pass
