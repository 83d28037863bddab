"""A support mailbox's mail, built with the standard library's email package as mail
clients send it, and what a reader sees in each (the expected values of the tests).

The story: Ana writes about an invoice charged twice (multipart/alternative, with a
signature); support replies from the mailbox (in Sent); Ana answers, quoting it (a
thread of three). Bo writes in HTML only; Zoë in iso-8859-1; Dirk from an old
Outlook in windows-1252; Eve sends a PDF and a photo; a monitoring tool sends mail
without a Message-ID; a broken mailer sends a charset nobody knows.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

MAILBOX = "support@example.com"

ANA_BODY = "Hello,\n\nInvoice 1042 was charged twice on my card. Please refund one.\n"
ANA_SIGNATURE = "Ana Lopez\nAcme Ltd"
REPLY_BODY = "Hello Ana,\n\nWe refunded the second charge of invoice 1042; it shows in 3 days."
ANA_AGAIN_BODY = "Thank you, it arrived."
BO_TEXT = "Hi team,\n\nWe want 40 more seats:\n\n- Pro plan\n- yearly billing\n\nBo"
ZOE_BODY = "Bonjour, la crème brûlée était froide à côté du café."
DIRK_BODY = "Our order \u201cQ-77\u201d for \u20ac1\u00a0200 has not arrived \u2013 where is it?"
EVE_BODY = "The damaged parcel, photos attached."
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8
PHOTO = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(997)
MONITOR_BODY = "disk /var is 91% full"


def _at(day: int, hour: int) -> str:
    return format_datetime(datetime(2026, 11, day, hour, 0, tzinfo=UTC))


def _base(message_id: str | None, sender: str, subject: str, day: int, hour: int,
          to: str = MAILBOX) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = _at(day, hour)
    if message_id is not None:
        message["Message-ID"] = f"<{message_id}>"
    return message


def ana_invoice() -> EmailMessage:
    """multipart/alternative: plain text with a signature, and its HTML twin."""
    message = _base("inv-1042@acme.example", "Ana Lopez <ana@acme.example>",
                    "Invoice 1042 charged twice", 2, 9)
    message["Cc"] = "Finance <finance@acme.example>"
    message["X-Priority"] = "1"
    message.set_content(f"{ANA_BODY}\n-- \n{ANA_SIGNATURE}\n")
    message.add_alternative("<p>Hello,</p><p>Invoice 1042 was charged <b>twice</b> on my "
                            "card. Please refund one.</p><p>-- <br>Ana Lopez<br>Acme Ltd</p>",
                            subtype="html")
    return message


def support_reply() -> EmailMessage:
    """The reply the mailbox sent, as it sits in Sent."""
    message = _base("reply-1042@example.com", f"Support <{MAILBOX}>",
                    "Re: Invoice 1042 charged twice", 2, 11, to="Ana Lopez <ana@acme.example>")
    message["In-Reply-To"] = "<inv-1042@acme.example>"
    message["References"] = "<inv-1042@acme.example>"
    message.set_content(f"{REPLY_BODY}\n\nOn Mon, 2 Nov 2026, Ana Lopez wrote:\n"
                        f"> Invoice 1042 was charged twice on my card.\n")
    return message


def support_announcement() -> EmailMessage:
    """A message the mailbox sent that answers nothing: no outcome of any thread."""
    message = _base("news-11@example.com", f"Support <{MAILBOX}>", "Maintenance on Sunday",
                    1, 9, to="customers@example.com")
    message.set_content("The service is down for maintenance on Sunday 02:00-03:00 UTC.")
    return message


def ana_thanks() -> EmailMessage:
    """Ana's answer to the reply: third in the thread, quoting the reply."""
    message = _base("thanks-1042@acme.example", "Ana Lopez <ana@acme.example>",
                    "Re: Invoice 1042 charged twice", 3, 8)
    message["In-Reply-To"] = "<reply-1042@example.com>"
    message["References"] = "<inv-1042@acme.example> <reply-1042@example.com>"
    message.set_content(f"{ANA_AGAIN_BODY}\n\nOn Mon, 2 Nov 2026 at 11:00, Support "
                        f"<{MAILBOX}>\nwrote:\n> Hello Ana,\n> We refunded the second charge.\n")
    return message


def bo_html_only() -> EmailMessage:
    message = _base("seats-7@bigco.example", "Bo Berg <bo@bigco.example>",
                    "40 more seats", 2, 10)
    message.set_content("<html><head><style>p {color: red}</style></head><body>"
                        "<p>Hi team,</p><p>We want 40 more seats:</p>"
                        "<ul><li>Pro plan</li><li>yearly billing</li></ul><p>Bo</p>"
                        "</body></html>", subtype="html")
    return message


def zoe_latin1() -> EmailMessage:
    message = _base("cafe-3@bistro.example", "=?iso-8859-1?q?Zo=EB_Martin?= <zoe@bistro.example>",
                    "=?iso-8859-1?q?Caf=E9_froid?=", 2, 12)
    message.set_content(ZOE_BODY, charset="iso-8859-1", cte="quoted-printable")
    return message


def dirk_cp1252() -> bytes:
    """An old Outlook's windows-1252 mail, 8-bit, as the bytes it sends."""
    head = (f"From: Dirk Visser <dirk@haven.example>\r\nTo: {MAILBOX}\r\n"
            f"Subject: Order Q-77\r\nDate: {_at(2, 13)}\r\n"
            "Message-ID: <q77@haven.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=windows-1252\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n")
    return head.encode("ascii") + DIRK_BODY.encode("windows-1252") + b"\r\n"


def eve_attachments() -> EmailMessage:
    message = _base("parcel-9@home.example", "Eve Stone <eve@home.example>",
                    "Damaged parcel", 2, 14)
    message.set_content(EVE_BODY)
    message.add_attachment(PDF, maintype="application", subtype="pdf",
                           filename="delivery note.pdf")
    message.add_attachment(PHOTO, maintype="image", subtype="jpeg", filename="box.jpg")
    return message


def monitor_without_id() -> EmailMessage:
    message = _base(None, "monitor@ops.example", "disk alert", 2, 15)
    message.set_content(MONITOR_BODY)
    return message


def unknown_charset() -> bytes:
    return (f"From: broken@mailer.example\r\nTo: {MAILBOX}\r\nSubject: ???\r\n"
            f"Date: {_at(2, 16)}\r\nMessage-ID: <broken-1@mailer.example>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=x-martian\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n\xe9\xe8 hello\r\n").encode("latin-1")


INBOX_MAIL: list[Callable[[], EmailMessage | bytes]] = [
    ana_invoice, bo_html_only, zoe_latin1, dirk_cp1252, eve_attachments, monitor_without_id,
    ana_thanks,
]
"""What arrives in INBOX, in order (the undecodable one aside)."""
