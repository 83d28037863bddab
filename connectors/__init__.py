"""Sources and sinks: where events and outcomes come from, where live decisions go."""

from connectors.base import RawRecord, Source
from connectors.files import FileFormat, FileSource
from connectors.mapping import EventMapper, OutcomeMapper, map_records
from connectors.sinks import Decision, FileSink, Sink, WebhookSink
from connectors.webhook_server import WebhookServer
from connectors.webhooks import WebhookSource

__all__ = [
    "Decision",
    "EventMapper",
    "FileFormat",
    "FileSink",
    "FileSource",
    "OutcomeMapper",
    "RawRecord",
    "Sink",
    "Source",
    "WebhookServer",
    "WebhookSink",
    "WebhookSource",
    "map_records",
]
