"""The IMAP source against a real Dovecot: what it reads of each kind of mail, dead
letters, positions, UIDVALIDITY, outcomes, TLS and logins, IDLE, a server restart."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord, Source
from connectors.imap import ImapSource, Login, Role, Server, Tls
from connectors.imap_config import imap_source
from connectors.specs import ImapSourceSpec
from shadow.core.errors import ConfigError, SourceError
from shadow.pipeline.source_guard import GuardedSource
from tests import imap_mail as mail
from tests.clock import ManualClock
from tests.imap_server import OAUTH_TOKEN, OAUTH_USER, PASSWORD, ImapServer, Mailbox
from tests.waiting import wait_until


def make_source(server: ImapServer, user: str, positions: Path, *, role: Role = Role.EVENTS,
                folders: tuple[str, ...] = ("INBOX",), **options: Any) -> ImapSource:
    return ImapSource(name="support", server=Server(server.host, server.port, Tls.IMPLICIT,
                                                    server.ca_file, 10.0),
                      login=Login(user, lambda: PASSWORD), folders=folders, role=role,
                      positions=positions, poll_interval_s=options.pop("poll_interval_s", 0.0),
                      idle=options.pop("idle", False), **options)


def read_all(source: Source, batch: int = 100) -> list[RawRecord]:
    records: list[RawRecord] = []
    while read := source.poll(batch):
        records.extend(read)
    return records


@pytest.fixture
def mailbox(imap_server: ImapServer, mailbox_user: str) -> Iterator[Mailbox]:
    with Mailbox(imap_server, mailbox_user) as box:
        yield box


@pytest.fixture
def positions(tmp_path: Path) -> Path:
    return tmp_path / "positions.json"


def by_id(records: list[RawRecord]) -> dict[str, dict[str, Any]]:
    return {r.value["event_id"]: r.value for r in records if r.value is not None}


def test_each_kind_of_mail_is_read_as_its_reader_sees_it(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    for make in mail.INBOX_MAIL:
        mailbox.deliver(make())
    with make_source(imap_server, mailbox.user, positions, headers=["X-Priority"]) as source:
        events = by_id(read_all(source))

    ana = events["inv-1042@acme.example"]
    assert ana["key"] == "inv-1042@acme.example"
    assert ana["occurred_at"] == "2026-11-02T09:00:00+00:00"
    payload = ana["payload"]
    assert payload["from"] == {"name": "Ana Lopez", "address": "ana@acme.example"}
    assert payload["to"] == [{"name": "", "address": mail.MAILBOX}]
    assert payload["cc"] == [{"name": "Finance", "address": "finance@acme.example"}]
    assert payload["subject"] == "Invoice 1042 charged twice"
    assert payload["body"] == mail.ANA_BODY.strip()
    assert payload["signature"] == mail.ANA_SIGNATURE
    assert payload["quoted"] == ""
    assert payload["headers"] == {"X-Priority": "1"}
    assert payload["attachments"] == []
    assert (payload["folder"], payload["uid"]) == ("INBOX", 1)

    bo = events["seats-7@bigco.example"]["payload"]
    assert bo["body"] == mail.BO_TEXT  # HTML only: the style is dropped, the list kept

    zoe = events["cafe-3@bistro.example"]["payload"]
    assert (zoe["body"], zoe["subject"]) == (mail.ZOE_BODY, "Café froid")
    assert zoe["from"] == {"name": "Zoë Martin", "address": "zoe@bistro.example"}
    assert events["q77@haven.example"]["payload"]["body"] == mail.DIRK_BODY

    eve = events["parcel-9@home.example"]["payload"]
    assert eve["body"] == mail.EVE_BODY
    assert eve["attachments"] == [
        {"name": "delivery note.pdf", "type": "application/pdf", "size": len(mail.PDF)},
        {"name": "box.jpg", "type": "image/jpeg", "size": len(mail.PHOTO)},
    ]
    assert "JFIF" not in str(eve)  # sizes, never content

    thanks = events["thanks-1042@acme.example"]
    assert thanks["key"] == "inv-1042@acme.example"  # joins Ana's thread
    assert thanks["payload"]["body"] == mail.ANA_AGAIN_BODY
    assert thanks["payload"]["quoted"].startswith("On Mon, 2 Nov 2026 at 11:00, Support")
    assert thanks["payload"]["quoted"].endswith("> We refunded the second charge.")


def test_mail_without_a_message_id_gets_an_id_of_its_content_in_any_folder(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path, tmp_path: Path
) -> None:
    mailbox.create("Ops")
    uid = mailbox.deliver(mail.monitor_without_id())
    mailbox.client.select_folder("INBOX")
    raw = mailbox.client.fetch([uid], [b"BODY.PEEK[]"])[uid][b"BODY[]"]
    expected = "sha256-" + hashlib.sha256(raw).hexdigest()[:40]
    with make_source(imap_server, mailbox.user, positions) as source:
        (first,) = read_all(source)
    mailbox.client.move([uid], "Ops")
    with make_source(imap_server, mailbox.user, tmp_path / "ops.json",
                     folders=("Ops",)) as source:
        (moved,) = read_all(source)
    assert first.value is not None and moved.value is not None
    assert first.value["event_id"] == moved.value["event_id"] == expected
    assert first.value["key"] == expected  # a message of its own thread
    assert first.value["payload"]["body"] == mail.MONITOR_BODY


def test_an_undecodable_message_is_a_dead_letter_with_its_uid_and_reason(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice())
    uid = mailbox.deliver(mail.unknown_charset())
    with make_source(imap_server, mailbox.user, positions) as source:
        good, dead = read_all(source)
    assert good.value is not None and good.error is None
    assert dead.value is None
    assert dead.error == (f"UID {uid} in INBOX: the text/plain part is in an unknown charset "
                          f"'x-martian'")
    assert "broken-1@mailer.example" in dead.raw_text()


def test_a_message_over_the_size_limit_is_a_dead_letter_and_not_fetched(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    small = mailbox.deliver(mail.zoe_latin1())
    big = mailbox.deliver(mail.eve_attachments())
    mailbox.client.select_folder("INBOX")
    sizes = mailbox.client.fetch([small, big], [b"RFC822.SIZE"])
    limit = sizes[small][b"RFC822.SIZE"]
    with make_source(imap_server, mailbox.user, positions,
                     max_message_bytes=limit) as source:
        kept, dead = read_all(source)
    assert kept.value is not None
    assert dead.error == (f"UID {big} in INBOX: the message is {sizes[big][b'RFC822.SIZE']} "
                          f"bytes, over max_message_bytes ({limit})")


def test_reading_leaves_the_mailbox_as_it_was(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    uid = mailbox.deliver(mail.ana_invoice())
    with make_source(imap_server, mailbox.user, positions) as source:
        assert len(read_all(source)) == 1
    mailbox.client.select_folder("INBOX")
    flags = mailbox.client.fetch([uid], [b"FLAGS"])[uid][b"FLAGS"]
    assert b"\\Seen" not in flags


def test_positions_are_kept_only_when_committed(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    for make in mail.INBOX_MAIL[:3]:
        mailbox.deliver(make())
    with make_source(imap_server, mailbox.user, positions) as source:
        assert len(read_all(source)) == 3  # handed out, never committed
    with make_source(imap_server, mailbox.user, positions) as source:
        again = read_all(source)
        assert len(again) == 3
        source.commit(again[-1].position)
    assert [r.position.rpartition(":")[2] for r in again] == ["1", "2", "3"]
    mailbox.deliver(mail.dirk_cp1252())
    with make_source(imap_server, mailbox.user, positions) as source:
        (new,) = read_all(source)
    assert new.value is not None and new.value["event_id"] == "q77@haven.example"


def test_a_batch_limit_leaves_the_rest_for_the_next_poll(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    for make in mail.INBOX_MAIL:
        mailbox.deliver(make())
    with make_source(imap_server, mailbox.user, positions, poll_interval_s=3600) as source:
        sizes = [len(source.poll(3)) for _ in range(4)]
    assert sizes == [3, 3, 1, 0]  # the rest comes at once; then nothing until the interval


def test_a_folder_with_a_new_uidvalidity_is_read_again_with_the_same_ids(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.create("Orders")
    mailbox.deliver(mail.dirk_cp1252(), folder="Orders")
    mailbox.deliver(mail.bo_html_only(), folder="Orders")
    before = mailbox.uidvalidity("Orders")
    with make_source(imap_server, mailbox.user, positions, folders=("Orders",)) as source:
        first = read_all(source)
        source.commit(first[-1].position)
    mailbox.recreate("Orders")
    assert mailbox.uidvalidity("Orders") != before
    with make_source(imap_server, mailbox.user, positions, folders=("Orders",)) as source:
        second = read_all(source)
    assert sorted(by_id(second)) == sorted(by_id(first)) == ["q77@haven.example",
                                                             "seats-7@bigco.example"]


def test_start_new_skips_the_mail_already_there(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice())
    with make_source(imap_server, mailbox.user, positions, start_new=True) as source:
        assert read_all(source) == []
        mailbox.deliver(mail.bo_html_only())
        (new,) = read_all(source)
    assert new.value is not None and new.value["event_id"] == "seats-7@bigco.example"


def test_a_new_folder_started_at_its_end_keeps_the_others_uncommitted(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.zoe_latin1())
    with make_source(imap_server, mailbox.user, positions, start_new=True) as source:
        assert read_all(source) == []  # INBOX starts after Zoë's message
    mailbox.deliver(mail.ana_invoice())
    mailbox.create("Orders")
    mailbox.deliver(mail.dirk_cp1252(), folder="Orders")
    both = ("INBOX", "Orders")
    with make_source(imap_server, mailbox.user, positions, start_new=True,
                     folders=both) as source:
        (ana,) = read_all(source)  # Orders starts at its end; nothing committed
    with make_source(imap_server, mailbox.user, positions, start_new=True,
                     folders=both) as source:
        (again,) = read_all(source)
    assert ana.value is not None and again.value is not None
    assert ana.value["event_id"] == again.value["event_id"] == "inv-1042@acme.example"


def test_the_daemon_guard_reports_the_server_away_and_reads_on_when_it_is_back(
    own_imap_server: ImapServer, mailbox_user: str, positions: Path
) -> None:
    clock = ManualClock()
    guarded = GuardedSource(make_source(own_imap_server, mailbox_user, positions),
                            clock=clock, uniform=lambda low, high: high)
    with guarded:
        assert guarded.poll(10) == []
        own_imap_server.stop(keep_data=True)
        assert guarded.poll(10) == []
        status = guarded.status()
        assert not status.up and status.reason is not None
        assert status.reason.startswith("poll failed: cannot read ['INBOX'] at 127.0.0.1")
        own_imap_server.start()
        with Mailbox(own_imap_server, mailbox_user) as box:
            box.deliver(mail.ana_invoice())
        assert guarded.poll(10) == []  # not before the backoff has passed
        clock.t += 1.0
        (record,) = guarded.poll(10)
        assert guarded.status().up
    assert record.value is not None and record.value["event_id"] == "inv-1042@acme.example"


def outcomes_by_key(records: list[RawRecord]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        assert record.value is not None, record.error
        found.setdefault(record.value["key"], []).append(record.value)
    return found


def test_what_the_person_did_is_the_thread_outcome(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    for folder in ("Billing", "Sales"):
        mailbox.create(folder)
    for make in (mail.ana_invoice, mail.bo_html_only, mail.zoe_latin1):
        mailbox.deliver(make())
    mailbox.move("<inv-1042@acme.example>", "INBOX", "Billing")
    mailbox.add_keywords("Billing", "<inv-1042@acme.example>", ["refund"])
    mailbox.move("<seats-7@bigco.example>", "INBOX", "Sales")
    mailbox.client.select_folder("Sales")
    mailbox.client.add_flags(mailbox.client.search(), [b"\\Flagged"])
    mailbox.deliver(mail.support_reply(), folder="Sent", flags=["\\Seen"])
    mailbox.deliver(mail.support_announcement(), folder="Sent")  # sent, but not a reply

    with make_source(imap_server, mailbox.user, positions, role=Role.OUTCOMES,
                     folders=("Billing", "Sales"), sent_folder="Sent") as source:
        found = outcomes_by_key(read_all(source))

    assert sorted(found) == ["inv-1042@acme.example", "seats-7@bigco.example"]
    filed, replied = found["inv-1042@acme.example"]
    assert filed["outcome"] == {"folder": "Billing", "flags": [], "keywords": ["refund"]}
    assert replied["outcome"] == {
        "folder": "Billing", "flags": [], "keywords": ["refund"],
        "reply": {"message_id": "reply-1042@example.com",
                  "in_reply_to": "inv-1042@acme.example",
                  "to": [{"name": "Ana Lopez", "address": "ana@acme.example"}],
                  "subject": "Re: Invoice 1042 charged twice", "text": mail.REPLY_BODY}}
    assert replied["decided_at"] > filed["decided_at"]  # the complete one is the latest
    assert replied["actor"] == mailbox.user
    (sales,) = found["seats-7@bigco.example"]
    assert sales["outcome"] == {"folder": "Sales", "flags": ["flagged"], "keywords": []}


def test_a_thread_read_again_gives_no_outcome_twice(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.create("Billing")
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    with make_source(imap_server, mailbox.user, positions, role=Role.OUTCOMES,
                     folders=("Billing",)) as source:
        first = read_all(source)
        source.commit(first[-1].position)
    mailbox.recreate("Billing")
    with make_source(imap_server, mailbox.user, positions, role=Role.OUTCOMES,
                     folders=("Billing",)) as source:
        assert read_all(source) == []


def test_idle_announces_new_mail_at_once(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    arrived = threading.Event()
    with make_source(imap_server, mailbox.user, positions, idle=True, poll_interval_s=3600,
                     on_arrival=arrived.set) as source:
        assert arrived.wait(timeout=20), "the IDLE connection did not start"
        arrived.clear()
        assert read_all(source) == []
        mailbox.deliver(mail.ana_invoice())
        assert arrived.wait(timeout=20), "IDLE did not announce the delivery"
        (record,) = wait_until(lambda: source.poll(10), timeout_s=10,
                               what="the announced message")
    assert record.value is not None and record.value["event_id"] == "inv-1042@acme.example"


def test_the_source_reads_on_after_the_server_restarts(
    own_imap_server: ImapServer, mailbox_user: str, positions: Path
) -> None:
    with Mailbox(own_imap_server, mailbox_user) as box:
        box.deliver(mail.ana_invoice())
    with make_source(own_imap_server, mailbox_user, positions) as source:
        (first,) = read_all(source)
        source.commit(first.position)
        own_imap_server.stop(keep_data=True)
        with pytest.raises(SourceError, match="cannot read"):
            source.poll(10)
        with pytest.raises(SourceError):  # still away: the next attempt fails too
            source.poll(10)
        own_imap_server.start()
        with Mailbox(own_imap_server, mailbox_user) as box:
            box.deliver(mail.bo_html_only())
        (second,) = read_all(source)
    assert second.value is not None and second.value["event_id"] == "seats-7@bigco.example"


def spec(server: ImapServer, **fields: Any) -> ImapSourceSpec:
    return ImapSourceSpec.model_validate({
        "kind": "imap", "name": "support", "host": server.host, "port": server.port,
        "ca_file": str(server.ca_file), "idle": False, "poll_interval": "0s", **fields})


def test_xoauth2_with_a_token_from_a_command(
    imap_server: ImapServer, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", f"print({OAUTH_TOKEN!r})"]
    source = imap_source(spec(imap_server, username=OAUTH_USER, oauth2_token_command=command),
                         role=Role.EVENTS, store_path=tmp_path / "store.duckdb",
                         base_dir=tmp_path, environ={})
    with source:
        assert read_all(source) == []
    assert source._positions.path == tmp_path / "store.duckdb.imap-support.json"


def test_a_wrong_token_is_refused(imap_server: ImapServer, tmp_path: Path) -> None:
    source = imap_source(spec(imap_server, username=OAUTH_USER, oauth2_token_env="TOKEN"),
                         role=Role.EVENTS, store_path=tmp_path / "s.duckdb", base_dir=tmp_path,
                         environ={"TOKEN": "not-the-token"})
    with pytest.raises(SourceError, match="(?i)cannot log in .* authentication failed"):
        source.open()
    source.close()


def test_starttls_on_the_plain_port(
    imap_server: ImapServer, mailbox: Mailbox, tmp_path: Path
) -> None:
    mailbox.deliver(mail.zoe_latin1())
    source = imap_source(spec(imap_server, username=mailbox.user, password_env="PW",
                              tls="starttls", port=imap_server.plain_port),
                         role=Role.EVENTS, store_path=tmp_path / "s.duckdb", base_dir=tmp_path,
                         environ={"PW": PASSWORD})
    with source:
        (record,) = read_all(source)
    assert record.value is not None and record.value["event_id"] == "cafe-3@bistro.example"


def test_a_certificate_nobody_vouches_for_is_refused(
    imap_server: ImapServer, tmp_path: Path
) -> None:
    source = imap_source(spec(imap_server, username="x@example.com", password_env="PW",
                              ca_file=None),
                         role=Role.EVENTS, store_path=tmp_path / "s.duckdb", base_dir=tmp_path,
                         environ={"PW": PASSWORD})
    with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED"):
        source.open()
    source.close()


def test_a_missing_password_variable_names_the_key(
    imap_server: ImapServer, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"IMAP_PW \(password_env\)"):
        imap_source(spec(imap_server, username="x@example.com", password_env="IMAP_PW"),
                    role=Role.EVENTS, store_path=tmp_path / "s.duckdb", base_dir=tmp_path,
                    environ={})


def test_the_example_configuration_builds_its_sources(tmp_path: Path) -> None:
    from shadow.config.file import load_config

    example = Path(__file__).resolve().parents[2] / "configs" / "inbox-triage.yaml"
    config = load_config(example)
    built = [imap_source(s, role=role, store_path=tmp_path / "inbox.duckdb", base_dir=tmp_path,
                         environ={"SUPPORT_IMAP_PASSWORD": "app-password"})
             for role, specs in ((Role.EVENTS, config.sources.events),
                                 (Role.OUTCOMES, config.sources.outcomes))
             for s in specs if isinstance(s, ImapSourceSpec)]
    assert [(s.name, s.role, s.folders, s.server.port) for s in built] == [
        ("imap:support-inbox", Role.EVENTS, ["INBOX"], 993),
        ("imap:support-filed", Role.OUTCOMES, ["Billing", "Sales", "Shipping",
                                                "[Gmail]/Sent Mail"], 993)]
