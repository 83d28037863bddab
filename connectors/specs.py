"""Source specs: where events, outcomes and review verdicts come from, and how a raw
record maps to them.

``sources`` of :class:`shadow.config.file.Config` lists what ``shadow run`` consumes
(export files, Kafka topics, vendor webhooks, IMAP mailboxes); ``mapping`` says where each
canonical field sits in a raw record (see :mod:`connectors.mapping`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from connectors.conditions import Condition
from shadow.core.spec import Duration, Spec


class EventMapping(Spec):
    """Where each canonical field of an Event sits in a raw record.

    Values are dotted paths (``ticket.via.channel``, ``tags.0``); ``$`` is the
    whole record. ``segment`` is either a path to an object of strings or a
    table of segment field to path.
    """

    event_id: str = "event_id"
    key: str = "key"
    occurred_at: str = "occurred_at"
    routing_key: str | None = "routing_key"
    segment: str | dict[str, str] = "segment"
    payload: str = "payload"
    when: Condition | None = None
    """Which records of the event sources are events (:mod:`connectors.conditions`);
    the others are skipped and counted. None: every record."""


class ActionTemplate(Spec):
    """One action made of each record: a tool by name, its arguments at a dotted path.

    ``{tool: update_record, arguments: changes}`` turns a change record's ``changes``
    object into ``{"tool": "update_record", "arguments": {...}}``.
    """

    tool: str = Field(min_length=1)
    arguments: str = "$"
    """Dotted path to the arguments, an object; ``$`` for the whole record."""


def _actions_form(value: Any) -> str:
    return "str" if isinstance(value, str) else "dict"


# Tagged by the type labels configuration errors leave out of the key they name
# (``mapping.outcomes.actions.tool``, not ``...actions.ActionTemplate.tool``).
_ActionsMapping = Annotated[
    Annotated[str, Tag("str")] | Annotated[ActionTemplate, Tag("dict")],
    Discriminator(_actions_form),
]


class OutcomeMapping(Spec):
    key: str = "key"
    outcome: str = "outcome"
    decided_at: str = "decided_at"
    actor: str | None = "actor"
    actions: _ActionsMapping | None = None
    """What the person did, as actions (:mod:`shadow.core.actions`), put under the key
    ``actions`` of the outcome (an object; ``{"actions": [...]}`` when the record has no
    outcome): a dotted path to a list already in that shape, or an :class:`ActionTemplate`.
    None: the outcome is as the record has it."""
    when: Condition | None = None
    """Which records of the outcome sources are outcomes (:mod:`connectors.conditions`);
    the others are skipped and counted. None: every record."""


class VerdictMapping(Spec):
    """Where each field of a review verdict sits in a raw record.

    ``verdict`` holds ``approve``, ``edit`` or ``reject`` (``approved``, ``edited``,
    ``rejected`` too); ``output`` the edited output of an edit; ``reviewer`` who decided.
    A record without an output or a reviewer where the path leads nowhere has none.
    """

    review_id: str = "review_id"
    verdict: str = "verdict"
    output: str | None = "output"
    reviewer: str | None = "reviewer"
    decided_at: str = "decided_at"


class MappingConfig(Spec):
    events: EventMapping = EventMapping()
    outcomes: OutcomeMapping = OutcomeMapping()
    verdicts: VerdictMapping = VerdictMapping()



class FileSourceSpec(Spec):
    """An export file, read once (the daemon reads it at start-up; replays are idempotent)."""

    kind: Literal["file"]
    path: str


class KafkaSourceSpec(Spec):
    kind: Literal["kafka"]
    bootstrap: str = Field(min_length=1)
    topics: list[str] = Field(min_length=1)
    group: str = Field(min_length=1)
    start: Literal["committed", "earliest", "latest"] = "committed"
    """``committed``: resume from the group's committed offsets (the earliest record
    where it has none). ``earliest``: from the first record, at every start, however
    far the group had got (a re-read stores nothing twice). ``latest``: only new
    records where the group has no committed offsets."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Passed to kafka-python's consumer (e.g. security settings)."""


class WebhookSourceSpec(Spec):
    """An HTTP endpoint a vendor pushes to, verified with the vendor's signature scheme."""

    kind: Literal["webhook"]
    name: str = Field(min_length=1)
    path: str = Field(pattern=r"^/[\w\-./]*$")
    scheme: Literal["zendesk", "hubspot_v3", "standard", "github", "none"] = "none"
    secret_env: str | None = None
    """Environment variable holding the signing secret; required unless the scheme is none."""
    tolerance: Duration = timedelta(minutes=5)
    max_body_bytes: int = Field(1_048_576, ge=1)
    ack_timeout: Duration = timedelta(seconds=4)
    """How long a delivery may wait to be stored before it gets 503 (the vendor retries)."""

    @model_validator(mode="after")
    def _signed_sources_name_their_secret(self) -> WebhookSourceSpec:
        if self.scheme != "none" and self.secret_env is None:
            raise ValueError(f"the {self.scheme} scheme needs secret_env")
        return self


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ImapSourceSpec(Spec):
    """A mailbox over IMAP (:mod:`connectors.imap`): new messages of ``folders`` as events
    (under ``sources.events``), or what a person filed and replied (under
    ``sources.outcomes``). Exactly one of ``password_env``, ``oauth2_token_env`` and
    ``oauth2_token_command`` says how it logs in."""

    kind: Literal["imap"]
    name: str = Field(pattern=r"^[\w.-]+$")
    """Names the source in logs and its positions file; unique among IMAP sources."""
    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    """993 with ``tls: implicit``, 143 otherwise."""
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    """``none`` only for a server on this machine (127.0.0.1, ::1, localhost)."""
    ca_file: str | None = None
    """PEM file of the CA certificates to trust instead of the system's."""
    username: str = Field(min_length=1)
    password_env: str | None = None
    """Environment variable holding the password (an app password for Gmail)."""
    oauth2_token_env: str | None = None
    """Environment variable holding an OAuth2 access token (SASL XOAUTH2)."""
    oauth2_token_command: list[str] | None = Field(None, min_length=1)
    """A command that prints an OAuth2 access token; run at every connection."""
    folders: list[str] = Field(default_factory=lambda: ["INBOX"])
    sent_folder: str | None = None
    """Outcome sources: where the mailbox's replies are (``Sent``, ``[Gmail]/Sent Mail``,
    ``Sent Items``)."""
    headers: list[str] = Field(default_factory=list)
    """Headers copied into an event's payload, under ``headers``."""
    start: Literal["all", "new"] = "all"
    """``all``: read what a folder already holds when first seen; ``new``: only later mail."""
    idle: bool = True
    """Wait for new mail with IDLE on the first folder, where the server supports it."""
    poll_interval: Duration = timedelta(seconds=30)
    timeout: Duration = timedelta(seconds=30)
    max_message_bytes: int = Field(10 * 1024 * 1024, ge=1)
    """A larger message is not fetched; it becomes a dead letter."""
    max_body_chars: int = Field(20_000, ge=1)
    condstore: bool = True
    """Outcomes: follow flag and keyword changes with CONDSTORE where the server offers
    it; ``false`` uses the ``flag_window`` instead."""
    flag_window: int = Field(500, ge=0)
    """Outcomes, without CONDSTORE: the flags of this many of the last messages of each
    folder are read again at every poll (``0``: changes are not followed)."""
    positions: str | None = None
    """The positions file; by default ``<store>.imap-<name>.json`` beside the store."""

    @model_validator(mode="after")
    def _one_way_to_log_in(self) -> ImapSourceSpec:
        given = [name for name in ("password_env", "oauth2_token_env", "oauth2_token_command")
                 if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of password_env, oauth2_token_env and "
                             f"oauth2_token_command (got {given or 'none'})")
        if self.tls == "none" and self.host not in _LOOPBACK:
            raise ValueError(f"tls: none sends the password in clear; it is allowed for a "
                             f"server on this machine only, not {self.host!r}")
        if not self.folders and self.sent_folder is None:
            raise ValueError("folders: give at least one folder (or, for outcomes, "
                             "sent_folder)")
        return self


SourceSpec = Annotated[
    FileSourceSpec | KafkaSourceSpec | WebhookSourceSpec | ImapSourceSpec,
    Field(discriminator="kind"),
]


class SourcesConfig(Spec):
    events: list[SourceSpec] = Field(default_factory=list)
    outcomes: list[SourceSpec] = Field(default_factory=list)
    verdicts: list[SourceSpec] = Field(default_factory=list)
    """Review verdicts on the proposals of tier review, keyed by ``review_id``."""

    @model_validator(mode="after")
    def _one_group_per_kafka_source(self) -> SourcesConfig:
        # Members of one group are rebalanced together; one thread polling them in
        # turn could wait forever on a rebalance the other member must join.
        every = [*self.events, *self.outcomes, *self.verdicts]
        groups = [s.group for s in every if s.kind == "kafka"]
        shared = sorted({g for g in groups if groups.count(g) > 1})
        if shared:
            raise ValueError(f"each Kafka source needs a consumer group of its own; "
                             f"{shared} is used by more than one")
        return self

    @model_validator(mode="after")
    def _one_name_per_imap_source(self) -> SourcesConfig:
        # The name picks the positions file: two sources would overwrite each other's.
        names = [s.name for s in [*self.events, *self.outcomes] if s.kind == "imap"]
        shared = sorted({n for n in names if names.count(n) > 1})
        if shared:
            raise ValueError(f"each IMAP source needs a name of its own; {shared} is used "
                             f"by more than one")
        return self
