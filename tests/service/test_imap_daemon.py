"""``shadow run`` on a shared mailbox: a real Dovecot, the daemon as a subprocess killed
with SIGKILL and started again, and the report comparing an AI's suggested folder and
drafted reply with what the person did."""

from __future__ import annotations

import json
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadow.store.database import Store
from tests import imap_mail as mail
from tests.daemon_process import TOKEN, get, ready_api, start_daemon, stop
from tests.imap_server import PASSWORD, ImapServer, Mailbox
from tests.waiting import wait_until

# The AI under test: a folder from words of the subject and body, and a drafted reply
# when the customer asks for a refund or asks a question.
CANDIDATE = '''
def triage(event):
    text = (event.payload["subject"] + " " + event.payload["body"]).lower()
    if "invoice" in text:
        folder = "Billing"
    elif "seats" in text:
        folder = "Sales"
    elif "damaged" in text:
        folder = "Returns"
    elif "order" in text or "parcel" in text:
        folder = "Shipping"
    else:
        folder = "Archive"
    output = {"folder": folder}
    if "refund" in text:
        output["reply"] = ("Hello Ana, we refunded the second charge of invoice 1042; "
                           "it shows in 3 to 5 days.")
    elif "?" in text:
        output["reply"] = "We are looking into it and write again today."
    return output
'''

# What each message of the mailbox is, what the AI says of it (by the rules above, worked
# out by hand) and what the person did with its thread: (AI folder, AI drafts a reply,
# person's folder, person replied); None where the person left the thread alone.
SEEDED: dict[str, tuple[str, bool, str | None, bool]] = {
    "inv-1042@acme.example": ("Billing", True, "Billing", True),
    "thanks-1042@acme.example": ("Billing", False, "Billing", True),  # same thread
    "seats-7@bigco.example": ("Sales", False, "Sales", False),
    "cafe-3@bistro.example": ("Archive", False, "Archive", False),
    "q77@haven.example": ("Shipping", True, "Shipping", False),
    "parcel-9@home.example": ("Returns", False, "Shipping", False),
    "monitor": ("Archive", False, None, False),
}


@pytest.fixture
def deployment(tmp_path: Path, imap_server: ImapServer, mailbox_user: str,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Mailbox]]:
    monkeypatch.setenv("SUPPORT_IMAP_PASSWORD", PASSWORD)
    (tmp_path / "inbox_ai.py").write_text(CANDIDATE, encoding="utf-8")
    mailbox_settings = (f"host: 127.0.0.1, port: {imap_server.port}, "
                        f"ca_file: {imap_server.ca_file}, username: {mailbox_user}, "
                        f"password_env: SUPPORT_IMAP_PASSWORD, poll_interval: 1s")
    config = tmp_path / "inbox.yaml"
    config.write_text(textwrap.dedent(f"""
        candidate: {{callable: "inbox_ai:triage", name: inbox-ai, version: "1"}}
        comparator:
          kind: fields
          fields:
            folder: {{kind: exact}}
            reply: {{kind: similarity, threshold: 0.6, outcome_path: text}}
        store: {{path: inbox.duckdb}}
        sources:
          events:
            - {{kind: imap, name: support-inbox, {mailbox_settings}, folders: [INBOX]}}
          outcomes:
            - {{kind: imap, name: support-filed, {mailbox_settings},
               folders: [Billing, Sales, Shipping, Archive], sent_folder: Sent}}
        daemon:
          api: {{port: 0}}
          jobs: {{compare_every: 1s, reports_dir: reports}}
        """), encoding="utf-8")
    with Mailbox(imap_server, mailbox_user) as box:
        for folder in ("Billing", "Sales", "Shipping"):
            box.create(folder)
        yield config, box


def stored(db: Path) -> dict[str, int]:
    with Store(db, read_only=True) as store:
        row = store.db.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(DISTINCT event_id) FROM events),"
            " (SELECT count(*) FROM outcomes), (SELECT count(DISTINCT key) FROM outcomes),"
            " (SELECT count(*) FROM dead_letters), (SELECT count(*) FROM predictions)"
        ).fetchall()[0]
    return dict(zip(["events", "event_ids", "outcomes", "outcome_keys", "dead_letters",
                     "predictions"], row, strict=True))


def counts(found: dict[str, Any]) -> tuple[int, int, int] | None:
    """Events, dead letters and outcomes stored, as the report has them."""
    if not found:
        return None
    return found["events_stored"], found["dead_letters"], found["outcomes"]["stored"]


def figures(found: dict[str, Any]) -> dict[str, Any]:
    (candidate,) = found["candidates"]
    fields = {f["field"]: f["agreement"]["rate"] for f in candidate.get("fields", [])}
    return {"compared": candidate["compared"], "pending": candidate["pending"],
            "agreement": candidate["agreement"]["rate"], "folder": fields.get("folder"),
            "reply": fields.get("reply")}


def report(api: str) -> dict[str, Any]:
    status, body = get(api + "/report?format=json", token=TOKEN)
    return json.loads(body) if status == 200 else {}


def test_a_mailbox_shadowed_across_a_sigkill_stores_everything_once_and_is_reported(
    deployment: tuple[Path, Mailbox],
) -> None:
    config, box = deployment
    db = config.parent / "inbox.duckdb"
    for make in (mail.ana_invoice, mail.bo_html_only, mail.zoe_latin1, mail.dirk_cp1252,
                 mail.eve_attachments, mail.unknown_charset):
        box.deliver(make())

    daemon = start_daemon(config, "daemon-1.log")
    api = ready_api(db, process=daemon)
    wait_until(lambda: report(api), accept=lambda r: counts(r) == (5, 1, 0), timeout_s=60,
               what="the five messages of INBOX and the undecodable one")
    # The person files the threads and answers Ana, while the daemon watches.
    box.move("<inv-1042@acme.example>", "INBOX", "Billing")
    box.add_keywords("Billing", "<inv-1042@acme.example>", ["refund"])
    box.move("<seats-7@bigco.example>", "INBOX", "Sales")
    box.move("<cafe-3@bistro.example>", "INBOX", "Archive")
    box.move("<q77@haven.example>", "INBOX", "Shipping")
    box.deliver(mail.support_reply(), folder="Sent", flags=["\\Seen"])
    box.deliver(mail.support_announcement(), folder="Sent", flags=["\\Seen"])
    wait_until(lambda: report(api), accept=lambda r: counts(r) == (5, 1, 5), timeout_s=60,
               what="five outcomes: four threads filed, one reply")
    code, _ = stop(daemon, signal.SIGKILL)
    assert code == -signal.SIGKILL

    # While the daemon is down: Ana thanks, a monitor writes, the person files Eve's parcel.
    box.deliver(mail.ana_thanks())
    box.deliver(mail.monitor_without_id())
    box.move("<parcel-9@home.example>", "INBOX", "Shipping")

    compared = {k: v for k, v in SEEDED.items() if v[2] is not None}
    folders_agree = sum(ai == person for ai, _, person, _ in compared.values())
    replies_agree = sum(ai == person for _, ai, _, person in compared.values())
    both_agree = sum(f_ai == f_person and r_ai == r_person
                     for f_ai, r_ai, f_person, r_person in compared.values())
    assert (len(compared), folders_agree, replies_agree, both_agree) == (6, 5, 4, 3)
    expected = {"compared": len(compared), "pending": len(SEEDED) - len(compared),
                "agreement": both_agree / len(compared),
                "folder": folders_agree / len(compared), "reply": replies_agree / len(compared)}

    again = start_daemon(config, "daemon-2.log")
    try:
        api = ready_api(db, process=again)
        # Comparisons are made again as later outcomes of a thread arrive: wait for the last.
        found = wait_until(lambda: report(api),
                           accept=lambda r: counts(r) == (7, 1, 6) and figures(r) == expected,
                           timeout_s=60, what=f"seven events, six outcomes and {expected}")
    finally:
        code, log = stop(again)
    assert code == 0, log

    assert stored(db) == {"events": 7, "event_ids": 7, "outcomes": 6, "outcome_keys": 5,
                          "dead_letters": 1, "predictions": 7}
    assert found["dead_letters"] == 1
