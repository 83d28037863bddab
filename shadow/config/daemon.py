"""Daemon specs: what ``shadow run`` listens on, how often its jobs run, and what it keeps."""

from __future__ import annotations

import enum
from datetime import timedelta

from pydantic import Field, field_validator, model_validator

from shadow.core.spec import Duration, Spec


class ListenSpec(Spec):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65_535)


TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Scope(enum.StrEnum):
    """What a control API token may do. Each scope includes the ones before it."""

    READ = "read"
    """Status, history, reports, dead letters, metrics."""
    OPERATE = "operate"
    """Promote, pause, resume, roll back, restart, abort."""
    ADMIN = "admin"
    """Back up the store, and anything else that writes files."""

    def includes(self, other: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(other)


class TokenSpec(Spec):
    """One bearer token of the control API: whose it is, where it is, what it may do."""

    name: str = Field(pattern=TOKEN_NAME_PATTERN)
    """Recorded in the audit trail and the logs with everything done with the token."""
    env: str = Field(pattern=ENV_NAME_PATTERN)
    """The environment variable holding the token (never the token itself)."""
    scope: Scope | None = None
    scopes: list[Scope] | None = Field(None, min_length=1)
    """Either one ``scope`` or a list; the highest one counts, since it includes the rest."""

    @model_validator(mode="after")
    def _one_way_to_grant(self) -> TokenSpec:
        if (self.scope is None) == (self.scopes is None):
            raise ValueError("give either scope or scopes: read, operate or admin")
        return self

    @property
    def granted(self) -> Scope:
        chosen = [self.scope] if self.scope is not None else list(self.scopes or [])
        return max(chosen, key=list(Scope).index)


class ApiSpec(ListenSpec):
    port: int = Field(8787, ge=0, le=65_535)
    token_env: str = Field("SHADOW_API_TOKEN", pattern=ENV_NAME_PATTERN)
    """The variable the CLI reads its token from. When neither ``tokens`` nor
    ``tokens_file`` is given, also the daemon's one token, which then has every scope."""
    tokens: list[TokenSpec] = Field(default_factory=list)
    tokens_file: str | None = None
    """Lines of ``NAME SCOPE SHA256-HEX-OF-THE-TOKEN`` (``shadow token`` makes one);
    relative to the configuration file, read when the daemon starts."""

    @field_validator("tokens")
    @classmethod
    def _distinct(cls, tokens: list[TokenSpec]) -> list[TokenSpec]:
        for key in ("name", "env"):
            seen: set[str] = set()
            for token in tokens:
                value = getattr(token, key)
                if value in seen:
                    raise ValueError(f"two tokens have the {key} {value!r}; each needs its own")
                seen.add(value)
        return tokens

    @property
    def single_token(self) -> bool:
        """Whether the daemon has one token, from ``token_env``, with every scope."""
        return not self.tokens and self.tokens_file is None


class WebhookServerSpec(ListenSpec):
    port: int = Field(8788, ge=0, le=65_535)
    public_url: str | None = Field(None, pattern=r"^https?://")
    """The URL vendors call, when a proxy sits in front (HubSpot signs the full URL)."""
    header_timeout: Duration = timedelta(seconds=10)
    """How long a request's headers may take to arrive (from connecting, or the previous answer)."""
    body_timeout: Duration = timedelta(seconds=10)
    """How long a request's body may take to arrive before it gets 408."""
    max_connections: int = Field(512, ge=1)
    """Connections open at once; one more gets 503 and is closed."""

    @field_validator("header_timeout", "body_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class RetentionSpec(Spec):
    payload_older_than: Duration | None = None
    """Raw event payloads and dead-letter records older than this are archived then blanked;
    counts, predictions, outcomes and comparisons stay. ``None`` keeps everything."""
    archive_dir: str | None = None
    """Parquet files of what was blanked; ``None`` deletes without archiving."""


class JobsSpec(Spec):
    evaluate_every: Duration = timedelta(seconds=30)
    compare_every: Duration = timedelta(seconds=60)
    report_every: Duration = timedelta(days=1)
    reports_dir: str = "reports"
    retention_every: Duration = timedelta(days=1)
    checkpoint_every: Duration = timedelta(hours=1)
    retention: RetentionSpec = RetentionSpec()
    backup_every: Duration | None = None
    """Copy the store into ``backup_dir`` this often (``shadow backup``); off unless set."""
    backup_dir: str = "backups"
    backup_keep: int = Field(7, ge=1)
    """The newest backups kept in ``backup_dir``; older ones this job made are deleted."""


class DaemonSpec(Spec):
    api: ApiSpec = ApiSpec()
    webhooks: WebhookServerSpec = WebhookServerSpec()
    jobs: JobsSpec = JobsSpec()
    shutdown_deadline: Duration = timedelta(seconds=30)
    """How long in-flight work may take to finish after SIGTERM."""
    poll_timeout_s: float = Field(0.05, gt=0.0, le=60.0)
    """How long the pipeline sleeps after a pass that found no records. Webhook deliveries
    and control calls wake it at once; Kafka records wait at most this long."""
