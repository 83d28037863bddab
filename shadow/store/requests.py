"""The requests chat candidates sent, once per distinct content (table ``requests``).

A chat candidate keeps the JSON body it sent with its prediction
(``Prediction.request``: messages after templating, tools offered, parameters, model;
headers, where an API key goes, are never part of it). The store keeps each distinct
body once, under the SHA-256 of its canonical JSON (keys sorted, no spaces), and the
prediction names it in its ``request_hash``; the same body sent again, by any event or
replay, adds no row.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pyarrow as pa

from shadow.core.models import Prediction

_UTC = pa.timestamp("us", tz="UTC")


def canonical_json(request: Any) -> bytes:
    """The canonical JSON of a request: keys sorted, no spaces."""
    return orjson.dumps(request, option=orjson.OPT_SORT_KEYS)


def request_hash(request: Any) -> str:
    """The SHA-256, in hex, of the canonical JSON of ``request``."""
    return hashlib.sha256(canonical_json(request)).hexdigest()


def hashes(predictions: list[Prediction]) -> list[str | None]:
    """Each prediction's request hash, ``None`` for one that kept no request."""
    return [None if p.request is None else request_hash(p.request) for p in predictions]


def requests_table(predictions: list[Prediction]) -> pa.Table:
    """One row per distinct request the predictions sent, the first sender's with it."""
    rows: dict[str, Prediction] = {}
    for p, digest in zip(predictions, hashes(predictions), strict=True):
        if digest is not None and digest not in rows:
            rows[digest] = p
    kept = list(rows.values())
    return pa.table({
        "request_hash": pa.array(list(rows), pa.string()),
        "request": pa.array([canonical_json(p.request).decode() for p in kept], pa.string()),
        "candidate": pa.array([p.candidate for p in kept], pa.string()),
        "version": pa.array([p.version for p in kept], pa.string()),
        "model": pa.array([_model(p.request) for p in kept], pa.string()),
        "first_sent_at": pa.array([p.predicted_at for p in kept], _UTC),
    })


def _model(request: Any) -> str | None:
    model = request.get("model") if isinstance(request, dict) else None
    return model if isinstance(model, str) else None
