"""Daemon specs: what ``shadow run`` listens on, how often its jobs run, and what it keeps."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field, field_validator

from rollout.plan import Duration
from shadow.spec import Spec


class ListenSpec(Spec):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65_535)


class ApiSpec(ListenSpec):
    port: int = Field(8787, ge=0, le=65_535)
    token_env: str = "SHADOW_API_TOKEN"
    """The bearer token every data or state-changing call must carry."""


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
