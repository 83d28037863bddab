"""A realistic support-ticket workload for ``shadow demo``.

Each event is a ticket being created; each outcome is the category a support
agent filed it under, hours to days later. The files carry the problems real
exports have: malformed lines, exact duplicate lines, tickets still open, tickets
re-categorised later, tickets a second agent reviewed and confirmed, and agents
who are occasionally wrong themselves. Everything is drawn from generators
seeded by ``seed``, so a seed always writes the same bytes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from shadow.demo.texts import CATEGORIES, compose

BASE_TIME = datetime(2024, 3, 4, tzinfo=UTC)
"""Monday 00:00 UTC; tickets are spread over the two weeks that follow."""

DAYS = 14
EVENTS_FILE = "events.jsonl"
OUTCOMES_FILE = "outcomes.jsonl"

_CATEGORY_WEIGHTS = (24, 18, 22, 10, 14, 12)  # in the order of CATEGORIES
_LANGUAGES = (("en", 65), ("de", 20), ("fr", 15))
_TIERS = (("free", 50), ("pro", 35), ("enterprise", 15))
_CHANNELS = (("email", 40), ("chat", 25), ("web", 25), ("phone", 10))
_PRIORITIES = ("low", "normal", "high", "urgent")
_PRIORITY_WEIGHTS = {
    "billing": (10, 50, 30, 10),
    "login": (10, 35, 35, 20),
    "bug": (10, 40, 35, 15),
    "feature_request": (60, 35, 5, 0),
    "shipping": (15, 50, 30, 5),
    "cancellation": (20, 60, 15, 5),
}
_PRIORITY_SPEED = {"low": 2.0, "normal": 1.0, "high": 0.6, "urgent": 0.3}
_FIRST_NAMES = {
    "en": ("Alex", "Sam", "Jordan", "Emily", "Chris", "Priya"),
    "de": ("Anna", "Lukas", "Mia", "Jonas", "Lea", "Felix"),
    "fr": ("Camille", "Louis", "Chloé", "Hugo", "Léa", "Lucas"),
}
_LAST_NAMES = {
    "en": ("Smith", "Brown", "Patel", "Lee"),
    "de": ("Müller", "Schmidt", "Weber", "Koch"),
    "fr": ("Martin", "Bernard", "Dubois"),
}
_AGENTS = {
    "en": ("maya.r", "tom.k", "lisa.w", "omar.h", "kate.b"),
    "de": ("jan.s", "eva.m", "nils.b"),
    "fr": ("julie.d", "marc.l"),
}

P_MALFORMED = 0.003
P_DUPLICATE = 0.01
P_OPEN = 0.08
P_RECATEGORISED = 0.05
P_REVIEWED = 0.2
"""Share of decided tickets a second agent reviews later (a QA spot check) and confirms."""
P_AGENT_NOISE = 0.03
P_AMBIGUOUS = 0.25
P_VAGUE = 0.07


@dataclass(frozen=True)
class DemoFiles:
    """What :func:`generate` wrote.

    ``events_written`` and ``outcomes_written`` count every line of their file,
    malformed and duplicate lines included. ``malformed_lines`` and
    ``duplicate_lines`` describe the events file (a duplicate is a line identical
    to an earlier one); ``malformed_outcome_lines`` the outcomes file.
    ``keys_without_outcome`` counts keys of valid events with no valid outcome;
    ``keys_with_changed_outcome`` counts keys whose valid outcomes carry more
    than one label, ``keys_recategorised_by_another`` those of them where the
    agent who changed the label was not the one who filed it; ``keys_reviewed``
    keys whose final label a second agent confirmed later. The last two are
    the report's human-to-human baseline: its disagreeing and agreeing pairs.
    """

    events: Path
    outcomes: Path
    events_written: int
    malformed_lines: int
    duplicate_lines: int
    outcomes_written: int
    malformed_outcome_lines: int
    keys_without_outcome: int
    keys_with_changed_outcome: int
    keys_reviewed: int
    keys_recategorised_by_another: int = 0


@dataclass(frozen=True)
class _Customer:
    id: str
    name: str
    language: str
    tier: str


@dataclass(frozen=True)
class _Ticket:
    key: str
    event_id: str
    occurred_at: datetime
    category: str
    customer: _Customer
    channel: str
    priority: str
    subject: str
    body: str


def generate(directory: Path, *, events: int = 5000, seed: int = 7) -> DemoFiles:
    """Write ``events.jsonl`` and ``outcomes.jsonl`` into ``directory`` (created if needed).

    ``events`` is the number of tickets; the events file also holds about 1 %
    duplicate lines, and about 0.3 % of tickets are written as malformed lines.
    Existing files of the same names are replaced.

    Raises:
        ValueError: if ``events`` is smaller than 1.
    """
    if events < 1:
        raise ValueError(f"events must be at least 1, got {events}")
    rng = random.Random(seed)
    tickets = _tickets(rng, events)
    event_lines, malformed, duplicates, broken_keys = _event_lines(rng, tickets)
    # Reviews draw from a generator of their own: the review rate can change
    # without reshuffling the tickets and their decisions.
    outcomes, reviewed = _outcomes(rng, tickets, random.Random(f"{seed}-reviews"))
    outcome_lines, malformed_outcomes = _outcome_lines(rng, outcomes)

    directory.mkdir(parents=True, exist_ok=True)
    events_path = directory / EVENTS_FILE
    outcomes_path = directory / OUTCOMES_FILE
    _write(events_path, event_lines)
    _write(outcomes_path, outcome_lines)

    per_key = Counter(key for key, _, _, _ in outcomes)
    labels: dict[str, set[str]] = {}
    for key, label, _, _ in outcomes:
        labels.setdefault(key, set()).add(label)
    valid_keys = {t.key for t in tickets} - broken_keys
    return DemoFiles(
        events=events_path,
        outcomes=outcomes_path,
        events_written=len(event_lines),
        malformed_lines=malformed,
        duplicate_lines=duplicates,
        outcomes_written=len(outcome_lines),
        malformed_outcome_lines=malformed_outcomes,
        keys_without_outcome=len(valid_keys - per_key.keys()),
        keys_with_changed_outcome=sum(1 for found in labels.values() if len(found) > 1),
        keys_reviewed=reviewed,
        keys_recategorised_by_another=_changed_by_another(outcomes),
    )


def _changed_by_another(outcomes: list[tuple[str, str, datetime, str]]) -> int:
    """Keys where one agent's label was changed by a different agent (in decided_at order)."""
    by_key: dict[str, list[tuple[datetime, str, str]]] = {}
    for key, label, at, actor in outcomes:
        by_key.setdefault(key, []).append((at, label, actor))
    changed = 0
    for decisions in by_key.values():
        decisions.sort()
        changed += any(a[1] != b[1] and a[2] != b[2]
                       for a, b in zip(decisions, decisions[1:], strict=False))
    return changed


def _pick(rng: random.Random, weighted: Sequence[tuple[str, int]]) -> str:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


def _customers(rng: random.Random, count: int) -> list[_Customer]:
    customers = []
    for i in range(count):
        language = _pick(rng, _LANGUAGES)
        name = f"{rng.choice(_FIRST_NAMES[language])} {rng.choice(_LAST_NAMES[language])}"
        customers.append(_Customer(f"C-{10001 + i}", name, language, _pick(rng, _TIERS)))
    return customers


def _occurred_at(rng: random.Random) -> datetime:
    # Fewer tickets at weekends and at night, as in any support queue.
    day = rng.choices(range(DAYS), weights=[0.35 if d % 7 >= 5 else 1.0 for d in range(DAYS)])[0]
    hour = rng.gauss(13.0, 3.5) if rng.random() < 0.85 else rng.uniform(0.0, 24.0)
    seconds = int(min(max(hour, 0.0), 23.999) * 3600)
    return BASE_TIME + timedelta(days=day, seconds=seconds)


def _priority(rng: random.Random, category: str, tier: str) -> str:
    priority = rng.choices(_PRIORITIES, weights=_PRIORITY_WEIGHTS[category])[0]
    if tier == "enterprise" and priority != "urgent" and rng.random() < 0.3:
        priority = _PRIORITIES[_PRIORITIES.index(priority) + 1]
    return priority


def _tickets(rng: random.Random, count: int) -> list[_Ticket]:
    customers = _customers(rng, max(20, count // 4))
    drafts = []
    for _ in range(count):
        customer = rng.choice(customers)
        category = rng.choices(CATEGORIES, weights=_CATEGORY_WEIGHTS)[0]
        channel = _pick(rng, _CHANNELS)
        others = [c for c in CATEGORIES if c != category]
        secondary = rng.choice(others) if rng.random() < P_AMBIGUOUS else None
        subject, body = compose(
            rng,
            language=customer.language,
            category=category,
            channel=channel,
            customer_name=customer.name,
            secondary=secondary,
            vague=rng.random() < P_VAGUE,
        )
        priority = _priority(rng, category, customer.tier)
        drafts.append((_occurred_at(rng), category, customer, channel, priority, subject, body))
    drafts.sort(key=lambda d: d[0])
    # Ticket numbers grow with time, as a ticketing system hands them out.
    return [
        _Ticket(f"TCK-{100001 + i}", f"evt_{rng.getrandbits(64):016x}", *draft)
        for i, draft in enumerate(drafts)
    ]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _event_record(ticket: _Ticket) -> dict[str, Any]:
    return {
        "event_id": ticket.event_id,
        "key": ticket.key,
        "occurred_at": _iso(ticket.occurred_at),
        "segment": {
            "channel": ticket.channel,
            "tier": ticket.customer.tier,
            "language": ticket.customer.language,
        },
        "payload": {
            "subject": ticket.subject,
            "body": ticket.body,
            "priority": ticket.priority,
            "customer": {"id": ticket.customer.id, "name": ticket.customer.name},
            "language": ticket.customer.language,
        },
        # One customer's tickets share a routing key, so a customer sees one behaviour.
        "routing_key": ticket.customer.id,
    }


def _dumps(record: dict[str, Any]) -> str:
    return orjson.dumps(record).decode()


def _malformed(record: dict[str, Any], kind: int) -> str:
    """One of four kinds of broken export line, chosen by ``kind``."""
    if kind == 0:
        text = _dumps(record)
        return text[: len(text) // 2]  # cut off mid-record
    broken = dict(record)
    if kind == 1:
        del broken["key"]
    elif kind == 2:
        broken["occurred_at"] = "last Tuesday"
    else:
        broken["segment"] = record["segment"]["channel"]
    return _dumps(broken)


def _event_lines(
    rng: random.Random, tickets: list[_Ticket]
) -> tuple[list[str], int, int, set[str]]:
    """Lines in file order, the numbers of malformed and duplicate lines, and the broken keys."""
    n = len(tickets)
    n_malformed = max(round(n * P_MALFORMED), min(4, n // 50))
    broken = set(rng.sample(range(n), n_malformed))
    healthy = [i for i in range(n) if i not in broken]
    repeated = rng.sample(healthy, min(len(healthy), round(n * P_DUPLICATE)))

    placed: list[tuple[datetime, int, str]] = []
    for kind, i in enumerate(sorted(broken)):
        placed.append((tickets[i].occurred_at, i, _malformed(_event_record(tickets[i]), kind % 4)))
    for i in healthy:
        placed.append((tickets[i].occurred_at, i, _dumps(_event_record(tickets[i]))))
    for i in repeated:
        # A redelivery: the same line again, a little later in the file.
        later = tickets[i].occurred_at + timedelta(minutes=rng.randint(5, 240))
        placed.append((later, n + i, _dumps(_event_record(tickets[i]))))
    placed.sort(key=lambda p: (p[0], p[1]))
    broken_keys = {tickets[i].key for i in broken}
    return [line for _, _, line in placed], n_malformed, len(repeated), broken_keys


def _delay(rng: random.Random, priority: str) -> timedelta:
    hours = rng.lognormvariate(1.6, 1.0) * _PRIORITY_SPEED[priority]
    if rng.random() < 0.08:
        hours += rng.uniform(48.0, 144.0)  # sat in a backlog for days
    return timedelta(seconds=int(max(hours, 0.1) * 3600))


def _outcomes(
    rng: random.Random, tickets: list[_Ticket], reviews: random.Random
) -> tuple[list[tuple[str, str, datetime, str]], int]:
    """``(key, label, decided_at, actor)`` for every decision, in decided_at order,
    and how many tickets a second agent reviewed.

    Tickets whose event line is malformed still get outcomes: the ticketing
    system knows them even though the export broke.
    """
    reviewed = 0
    decisions = []
    for ticket in tickets:
        if rng.random() < P_OPEN:
            continue
        label = ticket.category
        if rng.random() < P_AGENT_NOISE:
            label = rng.choice([c for c in CATEGORIES if c != ticket.category])
        agents = _AGENTS[ticket.customer.language]
        actor = f"{rng.choice(agents)}@support.example.com"
        decided_at = ticket.occurred_at + _delay(rng, ticket.priority)
        if rng.random() < P_RECATEGORISED:
            first = rng.choice([c for c in CATEGORIES if c != label])
            decisions.append((ticket.key, first, decided_at, actor))
            decided_at += timedelta(seconds=rng.randint(2 * 3600, 72 * 3600))
            actor = f"{rng.choice(agents)}@support.example.com"
        decisions.append((ticket.key, label, decided_at, actor))
        if reviews.random() < P_REVIEWED:
            reviewer = reviews.choice([a for a in agents if f"{a}@support.example.com" != actor])
            later = decided_at + timedelta(seconds=reviews.randint(3600, 48 * 3600))
            decisions.append((ticket.key, label, later, f"{reviewer}@support.example.com"))
            reviewed += 1
    decisions.sort(key=lambda d: (d[2], d[0]))
    return decisions, reviewed


def _outcome_lines(
    rng: random.Random, outcomes: list[tuple[str, str, datetime, str]]
) -> tuple[list[str], int]:
    """Outcome lines in decided_at order plus two malformed ones, and their count."""
    lines = [
        _dumps({"key": key, "outcome": label, "decided_at": _iso(at), "actor": actor})
        for key, label, at, actor in outcomes
    ]
    if len(lines) < 50:
        return lines, 0
    first, second = sorted(rng.sample(range(len(lines)), 2))
    key, label, _, actor = outcomes[second]
    undated = {"key": key, "outcome": label, "decided_at": "soon", "actor": actor}
    lines.insert(second + 1, _dumps(undated))
    lines.insert(first + 1, lines[first][: len(lines[first]) // 2])
    return lines, 2


def _write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
