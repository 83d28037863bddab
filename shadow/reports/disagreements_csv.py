"""Every disagreement as CSV, beside an HTML report that shows only the most recent ones.

One row per disagreeing prediction, by candidate, then newest event first (the HTML's
order), with the same redaction as the report (``OwnerOptions.redact``): a redacted payload
field reads ``[redacted]``, and its value is replaced wherever the output, the outcome or
the comparator's note echo it. Columns::

    candidate, version, event_id, key, event_time, decided_at, segment,
    ai_label, human_label, <payload fields that matter>, payload, ai_output, human_outcome,
    note

``ai_label`` and ``human_label`` are read at the comparator's paths (without one, a plain
value is its own label and an object has none); the
payload fields are ``OwnerOptions.disagreement_fields``, one column each. Objects are
JSON text, with their fields in the payload's own order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson

from shadow.core.paths import MISSING, get_path
from shadow.reports.options import OwnerOptions
from shadow.reports.owner_queries import OwnerQueries
from shadow.store.database import Store

SUFFIX = ".disagreements.csv"


def disagreements_path(report: Path) -> Path:
    """Where the CSV of ``report`` goes: ``report.html`` → ``report.disagreements.csv``."""
    return report.with_name(report.stem + SUFFIX)


def write_disagreements_csv(store: Store, options: OwnerOptions, path: Path) -> int:
    """Write every disagreement of ``store`` to ``path``; returns how many rows."""
    fields = options.disagreement_fields
    header = ["candidate", "version", "event_id", "key", "event_time", "decided_at", "segment",
              "ai_label", "human_label", *(f"payload.{f}" for f in fields), "payload",
              "ai_output", "human_outcome", "note"]
    written = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for (name, version), row in OwnerQueries(store, options).disagreement_rows():
            writer.writerow([
                name, version or "", row.event_id, row.key, row.occurred_at or "",
                row.decided_at, _cell(row.segment),
                _at(row.output, options.prediction_label), _at(row.outcome, options.outcome_label),
                *(_at(row.payload, f) for f in fields),
                _cell(row.payload), _cell(row.output), _cell(row.outcome), row.note or ""])
            written += 1
    return written


def _at(value: Any, path: str | None) -> str:
    if path is None:  # the whole value is the label when it is one
        return "" if isinstance(value, dict | list) else _cell(value)
    found = get_path(value, path)
    return "" if found is MISSING else _cell(found)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
