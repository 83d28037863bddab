"""Flags and keywords a person sets or clears after the IMAP source read a message, against
a real Dovecot: with CONDSTORE, through the bounded window without it, across restarts
and a UIDVALIDITY change."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import Source
from connectors.imap import ImapSource, Role
from connectors.imap_config import imap_source
from connectors.specs import ImapSourceSpec
from tests import imap_mail as mail
from tests.connectors.test_imap import make_source, read_all, spec
from tests.imap_server import ImapServer, Mailbox
from tests.waiting import wait_until

ANA, BO, ZOE = "<inv-1042@acme.example>", "<seats-7@bigco.example>", "<cafe-3@bistro.example>"


@pytest.fixture
def mailbox(imap_server: ImapServer, mailbox_user: str) -> Iterator[Mailbox]:
    with Mailbox(imap_server, mailbox_user) as box:
        box.create("Billing")
        yield box


@pytest.fixture
def positions(tmp_path: Path) -> Path:
    return tmp_path / "positions.json"


def billing(server: ImapServer, mailbox: Mailbox, positions: Path, **options: Any
            ) -> ImapSource:
    return make_source(server, mailbox.user, positions, role=Role.OUTCOMES,
                       folders=("Billing",), **options)


def outcomes(source: Source) -> list[dict[str, Any]]:
    read = read_all(source)
    if read:
        source.commit(read[-1].position)
    for record in read:
        assert record.value is not None, record.error
    return [r.value for r in read if r.value is not None]


def saved(positions: Path) -> dict[str, Any]:
    folders: dict[str, Any] = orjson.loads(positions.read_bytes())["folders"]
    return folders


def test_flags_set_and_cleared_after_reading_are_the_next_outcomes(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    # No window: what changed can only be known through CONDSTORE.
    with billing(imap_server, mailbox, positions, flag_window=0) as source:
        (filed,) = outcomes(source)
        assert filed["outcome"] == {"folder": "Billing", "flags": [], "keywords": []}
        assert outcomes(source) == []

        mailbox.add_keywords("Billing", ANA, ["refund", "\\Flagged"])
        (marked,) = outcomes(source)
        assert marked["key"] == "inv-1042@acme.example"
        assert marked["outcome"] == {"folder": "Billing", "flags": ["flagged"],
                                     "keywords": ["refund"]}
        assert marked["decided_at"] > filed["decided_at"]
        assert marked["actor"] == mailbox.user

        mailbox.remove_flags("Billing", ANA, ["\\Flagged"])
        (cleared,) = outcomes(source)
        assert cleared["outcome"] == {"folder": "Billing", "flags": [], "keywords": ["refund"]}
        assert cleared["decided_at"] > marked["decided_at"]
        assert outcomes(source) == []
    # CONDSTORE was used: the positions hold the folder's HIGHESTMODSEQ.
    assert saved(positions)["Billing"]["modseq"] == mailbox.highestmodseq("Billing")


def test_a_source_restarted_from_its_positions_gives_no_change_twice(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    mailbox.deliver(mail.bo_html_only(), folder="Billing")
    with billing(imap_server, mailbox, positions) as source:
        assert len(outcomes(source)) == 2
        mailbox.add_keywords("Billing", BO, ["upsell"])
        (first,) = outcomes(source)
    with billing(imap_server, mailbox, positions) as source:
        assert outcomes(source) == []
        mailbox.add_keywords("Billing", ANA, ["refund"])  # while it runs: seen once
        (second,) = outcomes(source)
    with billing(imap_server, mailbox, positions) as source:
        assert outcomes(source) == []
    assert (first["key"], first["outcome"]["keywords"]) == ("seats-7@bigco.example", ["upsell"])
    assert (second["key"], second["outcome"]["keywords"]) == ("inv-1042@acme.example",
                                                              ["refund"])


def test_changes_made_while_the_source_was_stopped_are_read_at_its_start(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    with billing(imap_server, mailbox, positions, flag_window=0) as source:
        assert len(outcomes(source)) == 1
    mailbox.add_keywords("Billing", ANA, ["\\Flagged"])
    with billing(imap_server, mailbox, positions, flag_window=0) as source:
        (marked,) = outcomes(source)
    assert marked["outcome"]["flags"] == ["flagged"]


def test_without_condstore_the_last_messages_of_the_window_are_followed(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    for make in (mail.ana_invoice, mail.bo_html_only, mail.zoe_latin1):
        mailbox.deliver(make(), folder="Billing")
    window = {"condstore": False, "flag_window": 2}
    with billing(imap_server, mailbox, positions, **window) as source:
        assert len(outcomes(source)) == 3
        mailbox.add_keywords("Billing", ZOE, ["cold-food"])
        mailbox.add_keywords("Billing", ANA, ["refund"])  # the oldest: outside the window
        (zoe,) = outcomes(source)
        assert zoe["key"] == "cafe-3@bistro.example"
        assert zoe["outcome"] == {"folder": "Billing", "flags": [], "keywords": ["cold-food"]}
        mailbox.remove_flags("Billing", ZOE, ["cold-food"])
        (cleared,) = outcomes(source)
        assert cleared["outcome"]["keywords"] == []
    assert "modseq" not in saved(positions)["Billing"]
    with billing(imap_server, mailbox, positions, **window) as source:
        assert outcomes(source) == []


def test_a_server_without_condstore_is_followed_through_the_window(
    imap_server_without_condstore: ImapServer, mailbox_user: str, positions: Path
) -> None:
    server = imap_server_without_condstore
    with Mailbox(server, mailbox_user) as box:
        box.create("Billing")
        box.deliver(mail.ana_invoice(), folder="Billing")
        assert b"CONDSTORE" not in box.client.capabilities()
        with billing(server, box, positions) as source:  # condstore: true, as by default
            assert len(outcomes(source)) == 1
            box.add_keywords("Billing", ANA, ["refund"])
            (marked,) = outcomes(source)
    assert marked["outcome"] == {"folder": "Billing", "flags": [], "keywords": ["refund"]}
    assert "modseq" not in saved(positions)["Billing"]


def test_flag_window_zero_follows_no_change_without_condstore(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    with billing(imap_server, mailbox, positions, condstore=False, flag_window=0) as source:
        assert len(outcomes(source)) == 1
        mailbox.add_keywords("Billing", ANA, ["refund"])
        assert outcomes(source) == []


def test_a_new_uidvalidity_resets_the_modseq_and_reads_the_flags_again(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    with billing(imap_server, mailbox, positions) as source:
        assert len(outcomes(source)) == 1
    before = saved(positions)["Billing"]
    mailbox.add_keywords("Billing", ANA, ["refund"])
    mailbox.recreate("Billing")  # the same message, with its keyword, under a new validity
    with billing(imap_server, mailbox, positions) as source:
        (marked,) = outcomes(source)
        assert outcomes(source) == []
    after = saved(positions)["Billing"]
    assert after["uidvalidity"] == mailbox.uidvalidity("Billing") != before["uidvalidity"]
    assert after["modseq"] == mailbox.highestmodseq("Billing")
    assert marked["outcome"] == {"folder": "Billing", "flags": [], "keywords": ["refund"]}


def test_a_change_on_a_message_the_source_never_filed_gives_no_outcome(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    with billing(imap_server, mailbox, positions, start_new=True) as source:
        assert outcomes(source) == []  # Ana's message was there before the source
        mailbox.add_keywords("Billing", ANA, ["refund"])
        assert outcomes(source) == []


def test_the_configuration_chooses_how_changes_are_followed(
    imap_server: ImapServer, tmp_path: Path
) -> None:
    built = imap_source(spec(imap_server, username="x@example.com", password_env="PW",
                             folders=["Billing"], condstore=False, flag_window=50),
                        role=Role.OUTCOMES, store_path=tmp_path / "s.duckdb",
                        base_dir=tmp_path, environ={"PW": "secret"})
    assert (built.condstore, built.flag_window) == (False, 50)
    default = ImapSourceSpec.model_validate({"kind": "imap", "name": "n", "host": "h",
                                             "username": "u", "password_env": "PW"})
    assert (default.condstore, default.flag_window) == (True, 500)
    with pytest.raises(ValueError, match="flag_window"):
        spec(imap_server, username="u", password_env="PW", flag_window=-1)


def test_a_message_without_a_message_id_is_followed_by_its_digest(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    uid = mailbox.deliver(mail.monitor_without_id(), folder="Billing")
    mailbox.client.select_folder("Billing")
    raw = mailbox.client.fetch([uid], [b"BODY.PEEK[]"])[uid][b"BODY[]"]
    expected = "sha256-" + hashlib.sha256(raw).hexdigest()[:40]
    with billing(imap_server, mailbox, positions, flag_window=0) as source:
        (filed,) = outcomes(source)
        mailbox.client.add_flags([uid], [b"\\Flagged"])
        (marked,) = outcomes(source)
    assert filed["key"] == marked["key"] == expected
    assert marked["outcome"]["flags"] == ["flagged"]


def test_idle_announces_a_flag_change_to_an_outcome_source(
    mailbox: Mailbox, imap_server: ImapServer, positions: Path
) -> None:
    mailbox.deliver(mail.ana_invoice(), folder="Billing")
    arrived = threading.Event()
    with billing(imap_server, mailbox, positions, idle=True, poll_interval_s=3600,
                 on_arrival=arrived.set) as source:
        assert arrived.wait(timeout=20), "the IDLE connection did not start"
        assert len(outcomes(source)) == 1
        arrived.clear()
        mailbox.add_keywords("Billing", ANA, ["refund"])
        assert arrived.wait(timeout=20), "IDLE did not announce the flag change"
        (marked,) = wait_until(lambda: source.poll(10), timeout_s=10,
                               what="the announced change")
    assert marked.value is not None and marked.value["outcome"]["keywords"] == ["refund"]
