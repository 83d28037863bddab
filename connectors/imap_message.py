"""One email, read from its raw bytes into what the IMAP source hands out.

:func:`read_message` decodes the MIME structure with the standard library's
:mod:`email` package (the ``default`` policy: headers decoded from RFC 2047, bodies
from base64 and quoted-printable, text from its declared charset), takes the plain
text (the HTML part turned into text when there is no plain one), splits it into
body, quoted text and signature (:mod:`connectors.imap_text`), and lists the
attachments by name, type and size, never their content.

A message whose text cannot be decoded (an unknown charset, bytes that are not in the
declared charset) raises :class:`Undecodable`; the source makes it a dead letter.

Threads: a message's thread key is the first ``Message-ID`` of its ``References``
(the message that started the thread), else its ``In-Reply-To``, else its own
``Message-ID``: a first message starts the thread its replies join. A message
without a ``Message-ID`` gets a stable generated one (:func:`generated_id`).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from connectors.imap_text import html_to_text, split_reply

_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


class Undecodable(Exception):
    """A message whose text cannot be read; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class Message:
    """What the IMAP source keeps of one email."""

    message_id: str
    """Without the angle brackets; generated when the message has none."""
    thread: str
    in_reply_to: str | None
    references: list[str]
    date: datetime | None
    """The ``Date`` header, in UTC; ``None`` when missing or unreadable."""
    payload: dict[str, Any] = field(default_factory=dict)


def read_message(raw: bytes, *, headers: Sequence[str] = (),
                 max_body_chars: int = 20_000) -> Message:
    """The message in ``raw`` (RFC 5322 bytes).

    ``headers`` are copied into the payload under ``headers`` (by their name as
    configured; absent ones are left out). Body, quoted text and signature are cut at
    ``max_body_chars`` each, and ``truncated`` says so.

    Raises:
        Undecodable: a text part is in an unknown charset, or not in its charset.
    """
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    own, references, in_reply_to = _thread_headers(parsed)
    message_id = own or generated_id(raw)
    thread = references[0] if references else in_reply_to or message_id
    date = _date(_header(parsed, "Date"))
    text = _text(parsed)
    reply = split_reply(text)
    truncated = any(len(part) > max_body_chars for part in reply)
    payload: dict[str, Any] = {
        "message_id": message_id,
        "from": _addresses(parsed, "From")[0] if _addresses(parsed, "From") else None,
        "to": _addresses(parsed, "To"),
        "cc": _addresses(parsed, "Cc"),
        "reply_to": _addresses(parsed, "Reply-To"),
        "subject": _header(parsed, "Subject"),
        "date": date.isoformat() if date is not None else None,
        "in_reply_to": in_reply_to,
        "references": references,
        "body": reply.body[:max_body_chars],
        "quoted": reply.quoted[:max_body_chars],
        "signature": reply.signature[:max_body_chars],
        "truncated": truncated,
        "attachments": _attachments(parsed),
    }
    if headers:
        payload["headers"] = {name: value for name in headers
                              if (value := _header(parsed, name)) is not None}
    return Message(message_id, thread, in_reply_to, references, date, payload)


def thread_of(head: bytes) -> tuple[str, str] | None:
    """``(message_id, thread)`` of a message from its header alone (``BODY[HEADER]``),
    as :func:`read_message` finds them; ``None`` for a message without a
    ``Message-ID``, whose id is a digest of the whole message.

    Raises:
        Undecodable: one of those headers cannot be read.
    """
    parsed = email.message_from_bytes(head, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    own, references, in_reply_to = _thread_headers(parsed)
    if own is None:
        return None
    return own, references[0] if references else in_reply_to or own


def _thread_headers(parsed: EmailMessage) -> tuple[str | None, list[str], str | None]:
    """The message's own id, its ``References`` and the id it replies to."""
    own = _ids(_header(parsed, "Message-ID"))
    parents = _ids(_header(parsed, "In-Reply-To"))
    return (own[0] if own else None, _ids(_header(parsed, "References")),
            parents[0] if parents else None)


def generated_id(raw: bytes) -> str:
    """A stable id for a message without a ``Message-ID``: a digest of its bytes.

    The same message in any folder (a move keeps its bytes) gets the same id.
    """
    return "sha256-" + hashlib.sha256(raw).hexdigest()[:40]


def _header(message: EmailMessage, name: str) -> str | None:
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError) as exc:  # a malformed header
        raise Undecodable(f"header {name} cannot be read: {exc}") from exc
    if value is None:
        return None
    return " ".join(str(value).split())


def _ids(value: str | None) -> list[str]:
    if not value:
        return []
    found = _MESSAGE_ID.findall(value)
    if found:
        return list(found)
    bare = value.strip()
    return [bare] if bare and " " not in bare else []


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": the time is UTC, its zone unknown (RFC 5322)
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _addresses(message: EmailMessage, name: str) -> list[dict[str, str]]:
    try:
        values = message.get_all(name) or []
        header_addresses = [a for v in values for a in getattr(v, "addresses", ())]
    except (ValueError, IndexError, TypeError):
        header_addresses = []
    if header_addresses:
        return [_address(a) for a in header_addresses if isinstance(a, Address)]
    raw = [str(v) for v in message.get_all(name) or []]
    return [{"name": n, "address": a.lower()} for n, a in getaddresses(raw) if a]


def _address(address: Address) -> dict[str, str]:
    return {"name": address.display_name, "address": address.addr_spec.lower()}


def _text(message: EmailMessage) -> str:
    """The plain text, or the HTML as text when there is no plain part."""
    plain = message.get_body(preferencelist=("plain",))
    if plain is not None and not _is_attachment(plain):
        return _decoded(plain)
    html = message.get_body(preferencelist=("html",))
    if html is not None and not _is_attachment(html):
        return html_to_text(_decoded(html))
    return ""


def _decoded(part: MIMEPart) -> str:
    charset = part.get_content_charset("us-ascii")
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    try:
        text = _decode(data, charset)
    except LookupError as exc:
        raise Undecodable(f"the {part.get_content_type()} part is in an unknown charset "
                          f"{charset!r}") from exc
    except UnicodeDecodeError as exc:
        raise Undecodable(f"the {part.get_content_type()} part is not valid {charset}: "
                          f"{exc.reason} at byte {exc.start}") from exc
    return text.replace("\r\n", "\n")


_LATIN = frozenset({"us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1"})


def _decode(data: bytes, charset: str) -> str:
    if charset.lower() not in _LATIN:
        return data.decode(charset)
    # Mail labelled us-ascii or iso-8859-1 is often windows-1252 in practice (curly
    # quotes, the euro sign), which shows its printable characters the same; the five
    # bytes windows-1252 leaves undefined are read as latin-1, which defines every byte.
    try:
        return data.decode("windows-1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _is_attachment(part: MIMEPart) -> bool:
    return part.get_content_disposition() == "attachment"


def _attachments(message: EmailMessage) -> list[dict[str, Any]]:
    found = []
    for part in message.walk():
        if part.is_multipart():
            continue
        assert isinstance(part, MIMEPart)
        name = part.get_filename()
        if not _is_attachment(part) and name is None:
            continue
        data = part.get_payload(decode=True)
        found.append({"name": name, "type": part.get_content_type(),
                      "size": len(data) if isinstance(data, bytes) else 0})
    return found
