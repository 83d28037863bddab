"""Sources and sinks: where events and outcomes come from, where live decisions go."""

from connectors.base import RawRecord, Source
from connectors.files import FileFormat, FileSource
from connectors.mapping import EventMapper, OutcomeMapper, map_records

__all__ = [
    "EventMapper",
    "FileFormat",
    "FileSource",
    "OutcomeMapper",
    "RawRecord",
    "Source",
    "map_records",
]
