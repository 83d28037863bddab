"""What an outcome IMAP source remembers of each thread, and the outcome each change makes.

A thread's memory, kept in the positions file (:mod:`connectors.imap_positions`) and
so committed only after the store has committed the outcomes it gave, holds:

- ``outcome``: everything known of the thread so far (``folder``, ``flags``,
  ``keywords``, ``labels``, ``reply``), which each new outcome carries whole;
- ``applied``: the messages already taken into it (``filed:<folder>:<id>``,
  ``reply:<id>``), so a message read again gives no second outcome;
- ``marks``: per filed message (``<folder>:<id>``), the flags and keywords it had
  when last seen, so that a flag or keyword set or removed later is a change of the
  thread (a new outcome), and the same change read twice is not;
- ``decided_at``: when the last outcome was decided; the next is never earlier,
  since the latest outcome of a key is the one compared.

These functions change the memory they are given and return the outcome's value
(``key``, ``decided_at``, ``outcome``), or ``None`` when there is nothing new.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

_SYSTEM_FLAGS = {b"\\Seen": "seen", b"\\Answered": "answered", b"\\Flagged": "flagged",
                 b"\\Draft": "draft", b"\\Deleted": "deleted"}

Threads = dict[str, dict[str, Any]]


def marks(flags: Iterable[Any]) -> dict[str, list[str]]:
    """A message's system ``flags`` (``seen``, ``flagged``, …) and ``keywords``, sorted,
    from its IMAP ``FLAGS`` (``\\Recent`` and other server flags left out)."""
    raw = [bytes(f) if not isinstance(f, str) else f.encode() for f in flags]
    return {"flags": sorted(_SYSTEM_FLAGS[f] for f in raw if f in _SYSTEM_FLAGS),
            "keywords": sorted(f.decode("utf-8", "replace") for f in raw
                               if not f.startswith(b"\\"))}


def filed(threads: Threads, key: str, *, folder: str, message_id: str,
          change: dict[str, Any], done: datetime, now: datetime) -> dict[str, Any] | None:
    """A message of thread ``key`` found in ``folder``: the thread's folder, flags and
    keywords become the message's (``change``). A message already taken into the thread
    (read again after a ``UIDVALIDITY`` change) gives an outcome only if its flags or
    keywords changed meanwhile (see :func:`remarked`)."""
    thread = threads.setdefault(key, {"outcome": {}, "applied": []})
    action = f"filed:{folder}:{message_id}"
    mark = {"flags": change["flags"], "keywords": change["keywords"]}
    if action in thread["applied"]:
        return remarked(threads, key, folder=folder, message_id=message_id, mark=mark,
                        now=now)
    thread["applied"].append(action)
    thread.setdefault("marks", {})[f"{folder}:{message_id}"] = mark
    return _decide(thread, key, change, done)


def replied(threads: Threads, key: str, *, message_id: str, change: dict[str, Any],
            done: datetime) -> dict[str, Any] | None:
    """The mailbox's reply ``message_id`` to thread ``key``, once."""
    thread = threads.setdefault(key, {"outcome": {}, "applied": []})
    action = f"reply:{message_id}"
    if action in thread["applied"]:
        return None
    thread["applied"].append(action)
    return _decide(thread, key, change, done)


def remarked(threads: Threads, key: str, *, folder: str, message_id: str,
             mark: dict[str, list[str]], now: datetime) -> dict[str, Any] | None:
    """The flags and keywords (``mark``) a filed message of thread ``key`` has now.

    A change from what the thread remembers of the message (a flag or keyword set or
    removed) makes the thread's folder, flags and keywords the message's, decided
    ``now``; no change, a change of ``seen`` alone (the message was opened), or a
    message never filed in the thread, gives ``None``.
    """
    thread = threads.get(key)
    if thread is None or f"filed:{folder}:{message_id}" not in thread["applied"]:
        return None
    remembered = thread.setdefault("marks", {})
    name = f"{folder}:{message_id}"
    # A thread remembered before marks were kept: what its outcome says is the baseline.
    before = remembered.get(name) or {"flags": thread["outcome"].get("flags", []),
                                      "keywords": thread["outcome"].get("keywords", [])}
    if _decisive(before) == _decisive(mark):
        remembered[name] = mark
        return None
    remembered[name] = mark
    return _decide(thread, key, {"folder": folder, **mark}, now)


def _decisive(mark: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """What in a message's marks is a person's decision: every flag and keyword but
    ``seen``, which opening the message sets (reading is not triage)."""
    return [f for f in mark["flags"] if f != "seen"], mark["keywords"]


def _decide(thread: dict[str, Any], key: str, change: dict[str, Any],
            done: datetime) -> dict[str, Any]:
    decided = done
    if "decided_at" in thread:
        floor = datetime.fromisoformat(thread["decided_at"]) + timedelta(milliseconds=1)
        decided = max(decided, floor)
    thread["outcome"] = {**thread["outcome"], **change}
    thread["decided_at"] = decided.isoformat()
    return {"key": key, "decided_at": decided.isoformat(), "outcome": dict(thread["outcome"])}
