"""One email read from its bytes: thread keys and their fallbacks, dates, limits, charsets."""

from __future__ import annotations

import pytest

from connectors.imap_message import Undecodable, read_message, thread_of


def raw(headers: str, body: str = "hello", charset: str = "utf-8") -> bytes:
    head = headers.strip().replace("\n", "\r\n")
    return (f"{head}\r\nContent-Type: text/plain; charset={charset}\r\n\r\n".encode("ascii")
            + body.encode(charset) + b"\r\n")


def test_the_thread_is_the_first_reference() -> None:
    message = read_message(raw("Message-ID: <c@x>\nIn-Reply-To: <b@x>\n"
                               "References: <a@x>\n <b@x>"))
    assert (message.thread, message.in_reply_to, message.references) == ("a@x", "b@x",
                                                                         ["a@x", "b@x"])


def test_without_references_the_thread_is_the_message_replied_to() -> None:
    message = read_message(raw("Message-ID: <c@x>\nIn-Reply-To: <b@x> (Bo's message)"))
    assert message.thread == "b@x"


def test_a_first_message_starts_its_own_thread() -> None:
    assert read_message(raw("Message-ID: <first@x>")).thread == "first@x"


def test_a_date_without_a_zone_is_utc_and_a_bad_one_is_none() -> None:
    dated = read_message(raw("Message-ID: <d@x>\nDate: Mon, 02 Nov 2026 09:00:00 -0000"))
    assert dated.payload["date"] == "2026-11-02T09:00:00+00:00"
    offset = read_message(raw("Message-ID: <d@x>\nDate: Mon, 02 Nov 2026 10:30:00 +0130"))
    assert offset.payload["date"] == "2026-11-02T09:00:00+00:00"
    assert read_message(raw("Message-ID: <d@x>\nDate: yesterday")).date is None


def test_long_text_is_cut_and_says_so() -> None:
    message = read_message(raw("Message-ID: <l@x>", "x" * 50), max_body_chars=10)
    assert (message.payload["body"], message.payload["truncated"]) == ("x" * 10, True)


def test_text_not_in_its_charset_is_undecodable() -> None:
    bad = raw("Message-ID: <u@x>", "ok").replace(b"ok", b"\xff\xfe ok")
    with pytest.raises(Undecodable, match="not valid utf-8: invalid start byte at byte 0"):
        read_message(bad)


def test_latin1_bytes_windows_1252_leaves_undefined_are_still_read() -> None:
    body = b"caf\xe9 \x81"  # 0x81 has no character in windows-1252
    message = read_message(b"Message-ID: <w@x>\r\nContent-Type: text/plain; "
                           b"charset=iso-8859-1\r\n\r\n" + body + b"\r\n")
    assert message.payload["body"] == "café \x81"


def test_headers_asked_for_are_copied_and_absent_ones_left_out() -> None:
    message = read_message(raw("Message-ID: <h@x>\nList-Id: <support.example.com>"),
                           headers=["List-Id", "X-Priority"])
    assert message.payload["headers"] == {"List-Id": "<support.example.com>"}


def test_the_header_alone_gives_the_same_id_and_thread() -> None:
    whole = raw("Message-ID: <c@x>\nIn-Reply-To: <b@x>\nReferences: <a@x> <b@x>")
    head = whole.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    message = read_message(whole)
    assert thread_of(head) == (message.message_id, message.thread) == ("c@x", "a@x")


def test_a_header_without_a_message_id_needs_the_whole_message() -> None:
    assert thread_of(b"Subject: alert\r\nIn-Reply-To: <b@x>\r\n\r\n") is None
