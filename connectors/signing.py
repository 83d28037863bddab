"""Signing a webhook delivery as its vendor would: the other side of :mod:`connectors.signatures`.

For sending test deliveries to a daemon (``shadow send``) and for tests: headers
made by :func:`sign` pass :func:`connectors.signatures.verify` with the same
scheme, secret, method and URL, at a ``now`` within the tolerance of ``at``.

>>> from datetime import UTC, datetime
>>> from connectors.signatures import verify
>>> at = datetime(2024, 5, 8, 9, 14, 5, tzinfo=UTC)
>>> headers = sign("zendesk", "s3cret", url="https://example.com/hooks", body=b"{}", at=at,
...                delivery_id="8350205582")
>>> verify("zendesk", "s3cret", method="POST", url="https://example.com/hooks",
...        headers=headers, body=b"{}", now=at).id
'8350205582'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

from connectors.http_post import Signer
from connectors.signatures import _HUBSPOT_DECODED, _HUBSPOT_ESCAPE, Scheme

__all__ = ["sign"]


def sign(scheme: Scheme | str, secret: str | None, *, url: str, body: bytes, at: datetime,
         delivery_id: str, method: str = "POST") -> dict[str, str]:
    """The headers that sign ``body``, sent with ``method`` to ``url`` at ``at``.

    ``delivery_id`` is the vendor's id of the delivery where the scheme carries one
    (Zendesk, Standard Webhooks, GitHub); HubSpot sends none.

    Raises:
        ValueError: an unknown scheme, a signed scheme without a secret, or a secret
            the scheme cannot use.
    """
    kind = Scheme(scheme)
    if kind is Scheme.NONE:
        return {}
    if not secret:
        raise ValueError(f"scheme {kind.value!r} needs a secret to sign with")
    key = secret.encode()
    if kind is Scheme.ZENDESK:
        stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"X-Zendesk-Webhook-Signature": _b64_hmac(key, stamp.encode() + body),
                "X-Zendesk-Webhook-Signature-Timestamp": stamp,
                "X-Zendesk-Webhook-Invocation-Id": delivery_id}
    if kind is Scheme.HUBSPOT_V3:
        millis = str(int(at.timestamp() * 1000))
        content = method.upper().encode() + _hubspot_uri(url).encode() + body + millis.encode()
        return {"X-HubSpot-Signature-v3": _b64_hmac(key, content),
                "X-HubSpot-Request-Timestamp": millis}
    if kind is Scheme.STANDARD:
        seconds = int(at.timestamp())
        return {"webhook-id": delivery_id, "webhook-timestamp": str(seconds),
                "webhook-signature": Signer(secret).signature(delivery_id, seconds, body)}
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery_id}


def _hubspot_uri(url: str) -> str:
    """The URL as HubSpot signs it, with the escapes it decodes, as the verifier does."""
    return _HUBSPOT_ESCAPE.sub(lambda m: _HUBSPOT_DECODED[m.group().lower()], url)


def _b64_hmac(key: bytes, content: bytes) -> str:
    return base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode("ascii")
