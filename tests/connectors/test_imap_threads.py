"""A thread's memory in an outcome IMAP source: filed messages, replies, and the flags and
keywords set or cleared on them later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connectors.imap_threads import Threads, filed, marks, remarked, replied

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


def file_ana(threads: Threads, flags: list[str], keywords: list[str]) -> None:
    filed(threads, "t1", folder="Billing", message_id="m1",
          change={"folder": "Billing", "flags": flags, "keywords": keywords}, done=T0, now=T0)


def test_marks_split_system_flags_from_keywords_and_drop_recent() -> None:
    assert marks([b"\\Flagged", b"refund", b"\\Recent", b"$Label1", b"\\Seen"]) == {
        "flags": ["flagged", "seen"], "keywords": ["$Label1", "refund"]}


def test_a_flag_set_later_is_a_new_outcome_with_the_whole_thread() -> None:
    threads: Threads = {}
    file_ana(threads, [], [])
    replied(threads, "t1", message_id="r1", change={"reply": {"text": "done"}}, done=T0)
    value = remarked(threads, "t1", folder="Billing", message_id="m1",
                     mark={"flags": ["flagged"], "keywords": ["refund"]}, now=LATER)
    assert value == {"key": "t1", "decided_at": LATER.isoformat(), "outcome": {
        "folder": "Billing", "flags": ["flagged"], "keywords": ["refund"],
        "reply": {"text": "done"}}}


def test_the_same_marks_twice_give_one_outcome() -> None:
    threads: Threads = {}
    file_ana(threads, [], [])
    mark = {"flags": ["flagged"], "keywords": []}
    assert remarked(threads, "t1", folder="Billing", message_id="m1", mark=mark, now=LATER)
    assert remarked(threads, "t1", folder="Billing", message_id="m1", mark=mark,
                    now=LATER) is None


def test_a_cleared_keyword_is_a_change_too() -> None:
    threads: Threads = {}
    file_ana(threads, [], ["refund"])
    value = remarked(threads, "t1", folder="Billing", message_id="m1",
                     mark={"flags": [], "keywords": []}, now=LATER)
    assert value is not None and value["outcome"]["keywords"] == []


def test_a_change_is_never_decided_before_the_last_outcome() -> None:
    threads: Threads = {}
    file_ana(threads, [], [])
    value = remarked(threads, "t1", folder="Billing", message_id="m1",
                     mark={"flags": ["flagged"], "keywords": []}, now=T0 - timedelta(days=1))
    assert value is not None
    assert value["decided_at"] == (T0 + timedelta(milliseconds=1)).isoformat()


def test_messages_not_filed_in_the_thread_give_nothing() -> None:
    threads: Threads = {}
    file_ana(threads, [], [])
    mark = {"flags": ["flagged"], "keywords": []}
    assert remarked(threads, "t2", folder="Billing", message_id="m9", mark=mark,
                    now=LATER) is None
    assert remarked(threads, "t1", folder="Sales", message_id="m1", mark=mark,
                    now=LATER) is None


def test_a_thread_remembered_without_marks_compares_with_its_outcome() -> None:
    threads: Threads = {"t1": {"outcome": {"folder": "Billing", "flags": [],
                                           "keywords": ["refund"]},
                               "applied": ["filed:Billing:m1"],
                               "decided_at": T0.isoformat()}}
    same = {"flags": [], "keywords": ["refund"]}
    assert remarked(threads, "t1", folder="Billing", message_id="m1", mark=same,
                    now=LATER) is None
    value = remarked(threads, "t1", folder="Billing", message_id="m1",
                     mark={"flags": ["flagged"], "keywords": ["refund"]}, now=LATER)
    assert value is not None and value["outcome"]["flags"] == ["flagged"]


def test_opening_a_message_is_no_decision_but_is_carried_with_the_next_one() -> None:
    threads: Threads = {}
    file_ana(threads, [], [])
    opened = {"flags": ["seen"], "keywords": []}
    assert remarked(threads, "t1", folder="Billing", message_id="m1", mark=opened,
                    now=LATER) is None
    flagged = {"flags": ["flagged", "seen"], "keywords": []}
    value = remarked(threads, "t1", folder="Billing", message_id="m1", mark=flagged,
                     now=LATER)
    assert value is not None and value["outcome"]["flags"] == ["flagged", "seen"]
    # Marked unread again: still no decision.
    unread = {"flags": ["flagged"], "keywords": []}
    assert remarked(threads, "t1", folder="Billing", message_id="m1", mark=unread,
                    now=LATER) is None
