"""Field mapping: the helpdesk example config end to end, and the mappers on their own."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.base import RawRecord
from connectors.mapping import EventMapper, MappingFailed, OutcomeMapper, map_records
from connectors.specs import EventMapping, OutcomeMapping
from shadow.config.file import load_config
from shadow.core.models import Event, RecordKind
from shadow.pipeline.replay import ReplayRequest, replay_files
from shadow.pipeline.runner import ReplaySummary
from shadow.reports.summary import build_report
from shadow.store.database import Store

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HELPDESK_CONFIG = CONFIGS / "helpdesk-export.yaml"
TICKETS = CONFIGS / "samples" / "helpdesk-tickets.jsonl"
RESOLUTIONS = CONFIGS / "samples" / "helpdesk-resolutions.csv"
CANDIDATE = "tests.connectors.test_mapping:helpdesk_triage"

# -- a candidate for the helpdesk sample ---------------------------------------
# The demo candidate reads payload["body"]; the helpdesk export calls it
# "description", so the example has a candidate of its own. It knows English and
# a little French, no German: agreement on language=de should suffer.

_KEYWORDS = {
    "billing": ("invoice", "refund", "charged", "payment", "vat", "currency", "facture"),
    "account_access": ("log in", "login", "password", "two-factor", "locked", "unlock"),
    "bug": ("error", "crash", "blank page", "fail", "500", "timeout", "plante"),
    "shipping": ("tracking", "parcel", "package", "shipped", "delivery", "colis"),
    "feature_request": ("would love", "would be great", "please add", "roadmap", "sso"),
    "cancellation": ("cancel", "résilier", "auto-renew"),
}
_FALLBACK = "bug"


def triage(ticket: dict[str, Any]) -> dict[str, Any]:
    """Classify a helpdesk ticket object by keywords in its subject and description."""
    text = f"{ticket.get('subject', '')} {ticket.get('description', '')}".lower()
    scores = {
        label: sum(len(re.findall(r"\b" + re.escape(word), text)) for word in words)
        for label, words in _KEYWORDS.items()
    }
    label = max(scores, key=lambda name: scores[name])
    if scores[label] == 0:
        return {"category": _FALLBACK.upper(), "confidence": 0.1}  # upper: comparator normalises
    return {"category": label, "confidence": round(min(0.95, 0.4 + 0.15 * scores[label]), 2)}


def helpdesk_triage(event: Event) -> dict[str, Any]:
    return triage(event.payload)


# -- the helpdesk example, replayed ---------------------------------------------


@pytest.fixture(scope="module")
def helpdesk(tmp_path_factory: pytest.TempPathFactory) -> tuple[ReplaySummary, Path]:
    db = tmp_path_factory.mktemp("helpdesk") / "helpdesk.duckdb"
    request = ReplayRequest(
        events=[TICKETS], outcomes=[RESOLUTIONS], db=db, config=HELPDESK_CONFIG,
        candidate=CANDIDATE,
    )
    return replay_files(request), db


def _stored_events(db: Path) -> dict[str, dict[str, Any]]:
    with Store(db, read_only=True) as store:
        rows = store.db.execute(
            "SELECT event_id, key, routing_key, occurred_at, payload, source, position "
            "FROM events"
        ).fetchall()
        segments = store.db.execute("SELECT event_id, field, value FROM event_segments").fetchall()
    events = {
        r[0]: {"key": r[1], "routing_key": r[2], "occurred_at": r[3],
               "payload": json.loads(r[4]), "source": r[5], "position": r[6], "segment": {}}
        for r in rows
    }
    for event_id, field, value in segments:
        events[event_id]["segment"][field] = value
    return events


def _raw_tickets() -> dict[int, dict[str, Any]]:
    tickets: dict[int, dict[str, Any]] = {}
    for line in TICKETS.read_text(encoding="utf-8").splitlines():
        try:
            ticket = json.loads(line)["ticket"]
        except json.JSONDecodeError:
            continue
        tickets.setdefault(ticket["id"], ticket)
    return tickets


def _final_resolutions() -> dict[str, tuple[datetime, str]]:
    final: dict[str, tuple[datetime, str]] = {}
    with RESOLUTIONS.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            if not row["solved_at"]:
                continue
            solved = datetime.fromisoformat(row["solved_at"]).replace(tzinfo=UTC)
            current = final.get(row["ticket_id"])
            if current is None or solved > current[0]:
                final[row["ticket_id"]] = (solved, row["resolution.category"])
    return final


def test_helpdesk_config_loads_with_its_comparators() -> None:
    config = load_config(HELPDESK_CONFIG)

    assert config.candidate is None
    assert config.comparator.kind == "normalized"
    assert config.comparator_named("strict").kind == "exact"
    assert config.mapping.events.segment == {
        "channel": "ticket.via.channel",
        "tier": "ticket.requester.organization.tier",
        "language": "ticket.custom_fields.language",
    }


def test_helpdesk_replay_counts(helpdesk: tuple[ReplaySummary, Path]) -> None:
    summary, db = helpdesk

    assert (summary.events_read, summary.events_stored) == (32, 30)
    assert (summary.duplicates, summary.dead_letters) == (1, 1)
    assert summary.predictions == 30 and summary.prediction_errors == 0
    assert (summary.outcomes_read, summary.outcomes_stored) == (31, 30)
    assert (summary.outcome_duplicates, summary.outcome_dead_letters) == (0, 1)
    with Store(db, read_only=True) as store:
        assert store.count("outcomes") == 30
        keys = store.db.execute("SELECT count(DISTINCT key) FROM outcomes").fetchone()
        assert keys == (27,)


def test_helpdesk_duplicate_and_dead_letters_name_their_lines(
    helpdesk: tuple[ReplaySummary, Path],
) -> None:
    _, db = helpdesk
    with Store(db, read_only=True) as store:
        duplicates = store.db.execute("SELECT event_id, position FROM duplicates").fetchall()
        dead = dict(
            store.db.execute("SELECT kind, position || ': ' || reason FROM dead_letters").fetchall()
        )

    assert duplicates == [("48211", "line 18")]
    assert dead["event"].startswith("line 32: not valid JSON")
    assert dead["outcome"] == "line 30: missing field 'decided_at' (path 'solved_at')"


def test_helpdesk_numeric_ticket_id_becomes_text_ids(helpdesk: tuple[ReplaySummary, Path]) -> None:
    events = _stored_events(helpdesk[1])

    event = events["48213"]
    assert event["key"] == "48213"
    assert event["routing_key"] == "17"
    assert event["segment"] == {"channel": "email", "tier": "enterprise", "language": "de"}
    assert event["occurred_at"] == datetime(2024, 5, 6, 15, 31, 9, tzinfo=UTC)
    assert event["position"] == "line 10"


def test_helpdesk_payload_is_the_ticket_object(helpdesk: tuple[ReplaySummary, Path]) -> None:
    events = _stored_events(helpdesk[1])
    raw = _raw_tickets()

    assert set(events) == {str(ticket_id) for ticket_id in raw}
    for ticket_id, ticket in raw.items():
        assert events[str(ticket_id)]["payload"] == ticket
    assert events["48213"]["payload"]["id"] == 48213  # the payload keeps the number


def test_helpdesk_ticket_without_organisation_routes_by_ticket(
    helpdesk: tuple[ReplaySummary, Path],
) -> None:
    event = _stored_events(helpdesk[1])["48207"]

    assert event["routing_key"] == "48207"
    assert event["segment"] == {"channel": "api", "language": "en"}


def test_helpdesk_ticket_without_language_has_no_language_segment(
    helpdesk: tuple[ReplaySummary, Path],
) -> None:
    event = _stored_events(helpdesk[1])["48228"]

    assert event["segment"] == {"channel": "email", "tier": "business"}


def test_helpdesk_offset_timestamp_is_the_same_instant(
    helpdesk: tuple[ReplaySummary, Path],
) -> None:
    event = _stored_events(helpdesk[1])["48236"]

    assert event["occurred_at"] == datetime(2024, 5, 10, 6, 40, 3, tzinfo=UTC)


def test_helpdesk_latest_resolution_wins(helpdesk: tuple[ReplaySummary, Path]) -> None:
    _, db = helpdesk
    with Store(db, read_only=True) as store:
        history = store.db.execute(
            "SELECT decided_at, outcome, actor FROM outcomes "
            "WHERE key = '48222' ORDER BY decided_at"
        ).fetchall()
        compared = dict(store.db.execute(
            "SELECT event_id, outcome_decided_at FROM comparisons "
            "WHERE event_id IN ('48219', '48222')"
        ).fetchall())
        pending = {c.event_id: c for chunk in store.pending_comparisons("none") for c in chunk}

    assert [json.loads(outcome)["category"] for _, outcome, _ in history] == ["shipping", "billing"]
    assert history[0][0] == datetime(2024, 5, 7, 16, 30, tzinfo=UTC)  # naive CSV time read as UTC
    assert history[1][2] == "kate.b@support.example.com"
    assert compared["48222"] == datetime(2024, 5, 8, 13, 44, 20, tzinfo=UTC)
    assert compared["48219"] == datetime(2024, 5, 9, 10, 15, 36, tzinfo=UTC)
    # what the comparator judged against: the final outcome object of each key
    assert pending["48222"].outcome == {"category": "billing", "macro": "Refund issued"}
    assert pending["48219"].outcome["category"] == "feature_request"


def test_helpdesk_agreement_matches_an_independent_count(
    helpdesk: tuple[ReplaySummary, Path],
) -> None:
    summary, db = helpdesk
    tickets = _raw_tickets()
    final = _final_resolutions()
    verdicts: list[tuple[str | None, bool]] = []
    for ticket_id, ticket in tickets.items():
        resolution = final.get(str(ticket_id))
        if resolution is None:
            continue
        predicted = triage(ticket)["category"].strip().casefold()
        language = ticket["custom_fields"].get("language")
        verdicts.append((language, predicted == resolution[1].strip().casefold()))
    compared = len(verdicts)
    agreed = sum(agree for _, agree in verdicts)
    by_language = Counter(language for language, _ in verdicts)
    agreed_by_language = Counter(language for language, agree in verdicts if agree)

    with Store(db, read_only=True) as store:
        report = build_report(store)
    (candidate,) = report["candidates"]
    assert compared == 26 and 0 < agreed < compared  # the sample shows both verdicts
    assert (summary.compared, summary.agreed) == (compared, agreed)
    assert candidate["compared"] == compared
    assert candidate["pending"] == len(tickets) - compared
    assert candidate["agreement"]["rate"] == pytest.approx(agreed / compared)
    languages = {s["value"]: s for s in candidate["segments"] if s["field"] == "language"}
    assert set(languages) == {"de", "en", "fr"}
    for language, segment in languages.items():
        assert segment["compared"] == by_language[language]
        rate = agreed_by_language[language] / by_language[language]
        assert segment["agreement"]["rate"] == pytest.approx(rate)
    assert languages["de"]["agreement"]["rate"] < candidate["agreement"]["rate"]


def test_helpdesk_replay_again_adds_nothing(helpdesk: tuple[ReplaySummary, Path]) -> None:
    _, db = helpdesk
    request = ReplayRequest(
        events=[TICKETS], outcomes=[RESOLUTIONS], db=db, config=HELPDESK_CONFIG,
        candidate=CANDIDATE,
    )
    again = replay_files(request)

    # every record read is accounted for: a re-read counts as a duplicate of this run
    assert (again.events_stored, again.duplicates, again.dead_letters) == (0, 31, 1)
    assert (again.predictions, again.outcomes_stored, again.compared) == (0, 0, 0)
    with Store(db, read_only=True) as store:
        assert store.count("events") == 30
        assert store.count("dead_letters") == 2
        assert store.count("duplicates") == 1  # re-reads at the same position are not kept


# -- EventMapper and OutcomeMapper ---------------------------------------------

TICKET_MAPPING = EventMapping(
    event_id="ticket.id",
    key="ticket.id",
    occurred_at="ticket.created_at",
    routing_key="ticket.requester.organization.id",
    segment={"channel": "ticket.via.channel", "language": "ticket.custom_fields.language"},
    payload="ticket",
)
RESOLUTION_MAPPING = OutcomeMapping(
    key="ticket_id", outcome="resolution", decided_at="solved_at", actor="agent_email"
)


def _ticket(**changes: Any) -> dict[str, Any]:
    ticket: dict[str, Any] = {
        "id": 48213,
        "created_at": "2024-05-06T15:31:09Z",
        "via": {"channel": "email"},
        "requester": {"id": 90392, "organization": {"id": 17, "tier": "enterprise"}},
        "custom_fields": {"language": "de"},
        "tags": ["zugang", "urgent"],
    }
    ticket.update(changes)
    return {"ticket": ticket}


def _reason(mapper: EventMapper | OutcomeMapper, record: dict[str, Any]) -> str:
    with pytest.raises(MappingFailed) as failure:
        mapper(record)
    return str(failure.value)


def test_event_mapper_numbers_become_string_ids() -> None:
    event = EventMapper(TICKET_MAPPING)(_ticket())

    assert (event.event_id, event.key, event.routing_key) == ("48213", "48213", "17")


def test_event_mapper_missing_path_names_field_and_path() -> None:
    record = _ticket()
    del record["ticket"]["created_at"]

    reason = _reason(EventMapper(TICKET_MAPPING), record)

    assert reason == "missing field 'occurred_at' (path 'ticket.created_at')"


def test_event_mapper_null_value_counts_as_missing() -> None:
    reason = _reason(EventMapper(TICKET_MAPPING), _ticket(id=None))

    assert reason == (
        "missing field 'event_id' (path 'ticket.id'); missing field 'key' (path 'ticket.id')"
    )


def test_event_mapper_default_mapping_names_field_only() -> None:
    reason = _reason(EventMapper(), {"event_id": "e1", "occurred_at": "2024-05-06T00:00:00Z"})

    assert reason == "missing field 'key'"


def test_event_mapper_bad_value_names_field_path_and_value() -> None:
    reason = _reason(EventMapper(TICKET_MAPPING), _ticket(created_at="yesterday"))

    assert reason.startswith("field 'occurred_at' (path 'ticket.created_at'): ")
    assert reason.endswith("got 'yesterday'")


def test_event_mapper_reads_naive_timestamps_as_utc() -> None:
    event = EventMapper(TICKET_MAPPING)(_ticket(created_at="2024-05-06 15:31:09"))

    assert event.occurred_at == datetime(2024, 5, 6, 15, 31, 9, tzinfo=UTC)
    assert event.occurred_at.utcoffset() is not None


def test_event_mapper_keeps_aware_timestamps_as_the_same_instant() -> None:
    event = EventMapper(TICKET_MAPPING)(_ticket(created_at="2024-05-06T17:31:09+02:00"))

    assert event.occurred_at == datetime(2024, 5, 6, 15, 31, 9, tzinfo=UTC)


def test_event_mapper_dollar_payload_is_the_whole_record() -> None:
    mapping = TICKET_MAPPING.model_copy(update={"payload": "$"})
    record = _ticket()

    event = EventMapper(mapping)(record)

    assert event.payload == record


def test_event_mapper_dollar_dot_prefix_is_the_root() -> None:
    mapping = TICKET_MAPPING.model_copy(update={"key": "$.ticket.requester.id"})

    assert EventMapper(mapping)(_ticket()).key == "90392"


def test_event_mapper_omits_segment_values_the_record_lacks() -> None:
    record = _ticket(custom_fields={})

    event = EventMapper(TICKET_MAPPING)(record)

    assert event.segment == {"channel": "email"}


def test_event_mapper_omits_null_segment_values() -> None:
    event = EventMapper(TICKET_MAPPING)(_ticket(via={"channel": None}))

    assert event.segment == {"language": "de"}


def test_event_mapper_missing_routing_key_falls_back_to_key() -> None:
    event = EventMapper(TICKET_MAPPING)(_ticket(requester={"id": 1, "organization": None}))

    assert event.routing_key is None
    assert event.route == "48213"


def test_event_mapper_indexes_lists_with_digit_parts() -> None:
    mapping = TICKET_MAPPING.model_copy(
        update={"segment": {"first_tag": "ticket.tags.0", "second_tag": "ticket.tags.1",
                            "third_tag": "ticket.tags.2"}}
    )

    event = EventMapper(mapping)(_ticket())

    assert event.segment == {"first_tag": "zugang", "second_tag": "urgent"}


def test_event_mapper_list_index_path_for_a_required_field() -> None:
    mapping = EventMapping(event_id="ids.1", key="ids.0", occurred_at="times.0", payload="$")
    record = {"ids": ["T-1", "E-9"], "times": ["2024-05-06T08:00:00Z"]}

    event = EventMapper(mapping)(record)

    assert (event.event_id, event.key) == ("E-9", "T-1")
    short = {"ids": ["T-1"], "times": ["2024-05-06T08:00:00Z"]}
    assert _reason(EventMapper(mapping), short) == "missing field 'event_id' (path 'ids.1')"


def test_event_mapper_segment_path_to_an_object() -> None:
    mapping = EventMapping(event_id="id", key="id", occurred_at="at", segment="attrs", payload="$")
    record = {"id": 7, "at": "2024-05-06T08:00:00Z", "attrs": {"tier": "pro", "seats": 40}}

    event = EventMapper(mapping)(record)

    assert event.segment == {"tier": "pro", "seats": "40"}


def test_event_mapper_canonical_records_pass_through() -> None:
    record = {"event_id": 1, "key": 2, "occurred_at": "2024-05-06T08:00:00",
              "segment": {"channel": "chat"}, "payload": {"subject": "hi"}}

    event = EventMapper()(record)

    assert (event.event_id, event.key, event.route) == ("1", "2", "2")
    assert event.segment == {"channel": "chat"}
    assert event.occurred_at.tzinfo is not None


def test_outcome_mapper_maps_nested_csv_shape() -> None:
    record = {"ticket_id": "48213", "resolution": {"category": "account_access"},
              "solved_at": "2024-05-06 16:10:02", "agent_email": "jan.s@support.example.com"}

    outcome = OutcomeMapper(RESOLUTION_MAPPING)(record)

    assert outcome.key == "48213"
    assert outcome.outcome == {"category": "account_access"}
    assert outcome.decided_at == datetime(2024, 5, 6, 16, 10, 2, tzinfo=UTC)
    assert outcome.actor == "jan.s@support.example.com"


def test_outcome_mapper_numeric_key_becomes_text() -> None:
    record = {"ticket_id": 48213, "resolution": "billing", "solved_at": "2024-05-06T16:10:02Z"}

    outcome = OutcomeMapper(RESOLUTION_MAPPING)(record)

    assert outcome.key == "48213"
    assert outcome.actor is None


def test_outcome_mapper_missing_paths_name_fields_and_paths() -> None:
    reason = _reason(OutcomeMapper(RESOLUTION_MAPPING), {"ticket_id": "48213"})

    assert reason == (
        "missing field 'outcome' (path 'resolution'); "
        "missing field 'decided_at' (path 'solved_at')"
    )


def test_map_records_turns_failures_into_dead_letters() -> None:
    now = datetime(2024, 5, 11, tzinfo=UTC)
    good = RawRecord("tickets.jsonl", "line 1", _ticket(), b"{...}\n")
    bad = RawRecord("tickets.jsonl", "line 2", {"ticket": {"id": 1}}, b'{"ticket": {"id": 1}}\n')
    undecodable = RawRecord("tickets.jsonl", "line 3", None, b"{oops\n", "not valid JSON: oops")

    mapped, dead = map_records(
        [good, bad, undecodable], EventMapper(TICKET_MAPPING), RecordKind.EVENT, now
    )

    assert [(event.event_id, record.position) for event, record in mapped] == [("48213", "line 1")]
    assert [(d.position, d.reason) for d in dead] == [
        ("line 2", "missing field 'occurred_at' (path 'ticket.created_at')"),
        ("line 3", "not valid JSON: oops"),
    ]
    assert dead[0].raw == '{"ticket": {"id": 1}}'
    assert all(d.kind is RecordKind.EVENT and d.received_at == now for d in dead)
