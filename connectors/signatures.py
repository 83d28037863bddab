"""Verifying signed webhook deliveries, in the schemes the vendors use.

Each scheme is one small class that checks a request against its secret and
answers the :class:`Delivery` it carries, or raises
:class:`~shadow.core.errors.SignatureError` saying why not. Verification is a pure
function of the request and ``now``: no I/O, no clock of its own.

====================  =============================================================
scheme                what is signed (HMAC-SHA256 with the secret, UTF-8, unless said)
====================  =============================================================
``zendesk``           ``X-Zendesk-Webhook-Signature`` = base64 of the
                      ``X-Zendesk-Webhook-Signature-Timestamp`` value (ISO 8601)
                      followed by the raw body; delivery id
                      ``X-Zendesk-Webhook-Invocation-Id``
``hubspot_v3``        ``X-HubSpot-Signature-v3`` = base64 of method + URI + body +
                      ``X-HubSpot-Request-Timestamp`` (Unix milliseconds); the URI is
                      the full URL HubSpot called, with ``%3A %2F %3F %40 %21 %24
                      %27 %28 %29 %2A %2C %3B`` decoded; no delivery id
``standard``          Standard Webhooks: ``webhook-signature`` holds one or more
                      space-separated ``v1,<base64>`` over ``id.timestamp.body``
                      (``webhook-id``, ``webhook-timestamp`` in Unix seconds); a
                      ``whsec_`` secret carries its key in base64
``github``            ``X-Hub-Signature-256`` = ``sha256=`` and the hex digest of the
                      body; delivery id ``X-GitHub-Delivery``; no timestamp
``none``              nothing: every request is accepted. Only without a secret
====================  =============================================================

Signatures are compared with :func:`hmac.compare_digest`. A scheme carrying a
timestamp refuses one further than ``tolerance`` from ``now``, in the past
(a replay, a delivery held up) or in the future (a skewed clock). GitHub signs
no timestamp: against a replay of a GitHub delivery there is only the
receiver's memory of delivery ids (see :class:`~connectors.webhooks.WebhookSource`).

>>> import base64, hashlib, hmac
>>> body = b'{"ticket": {"id": "1"}}'
>>> stamp = "2024-05-08T09:14:05Z"
>>> mac = hmac.new(b"s3cret", stamp.encode() + body, hashlib.sha256).digest()
>>> headers = {"X-Zendesk-Webhook-Signature": base64.b64encode(mac).decode(),
...            "X-Zendesk-Webhook-Signature-Timestamp": stamp,
...            "X-Zendesk-Webhook-Invocation-Id": "8350205582"}
>>> verify("zendesk", "s3cret", method="POST", url="https://example.com/hooks",
...        headers=headers, body=body,
...        now=datetime(2024, 5, 8, 9, 15, tzinfo=UTC)).id
'8350205582'
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar

from connectors.http_post import Signer
from shadow.core.errors import SignatureError

__all__ = [
    "DEFAULT_TOLERANCE",
    "Delivery",
    "GitHub",
    "HubSpotV3",
    "Scheme",
    "SignatureError",
    "StandardWebhooks",
    "Unsigned",
    "Verifier",
    "Zendesk",
    "body_id",
    "verifier",
    "verify",
]

DEFAULT_TOLERANCE = timedelta(minutes=5)
_MAX_ID = 200
"""A vendor's delivery id longer than this is not used; the body's digest stands in."""


class Scheme(enum.StrEnum):
    ZENDESK = "zendesk"
    HUBSPOT_V3 = "hubspot_v3"
    STANDARD = "standard"
    GITHUB = "github"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What a verified request is: the vendor's delivery, with its id.

    ``id`` is the vendor's id of the delivery, the same on every retry of it,
    or, for schemes without one, :func:`body_id` of the body. ``signed_at`` is
    the signed timestamp, for schemes that sign one.
    """

    id: str
    signed_at: datetime | None = None


def body_id(body: bytes) -> str:
    """The stand-in delivery id of a body: ``sha256:`` and 32 hex digits of its digest."""
    return "sha256:" + hashlib.sha256(body).hexdigest()[:32]


class Verifier(ABC):
    """Checks requests against one secret, in one scheme.

    Constructing one validates the secret; :meth:`verify` is then a pure
    function of the request. Header names are matched without regard to case.
    """

    scheme: ClassVar[Scheme]
    required: ClassVar[tuple[str, ...]] = ()
    """Headers (lower case) without which a request is refused before its body is read."""

    def __init__(self, tolerance: timedelta = DEFAULT_TOLERANCE) -> None:
        if tolerance <= timedelta(0):
            raise ValueError(f"the tolerance must be positive, got {tolerance}")
        self.tolerance = tolerance

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Refuse a request lacking a header the scheme needs, before reading its body.

        Raises:
            SignatureError: a required header is missing or empty.
        """
        _required(_lower(headers), self.required)

    @abstractmethod
    def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Delivery:
        """The delivery a request carries, if its signature holds.

        ``url`` is the full URL the vendor called (only HubSpot signs it);
        ``body`` the raw bytes as received.

        Raises:
            SignatureError: missing, malformed or wrong signature, or a signed
                timestamp outside the tolerance.
        """

    def _fresh(self, signed_at: datetime, now: datetime) -> None:
        skew = (now - signed_at).total_seconds()
        limit = self.tolerance.total_seconds()
        if skew > limit:
            raise SignatureError(f"the signed timestamp is {skew:.0f} s old, more than the "
                                 f"tolerance of {limit:.0f} s (a replay or a delayed delivery)")
        if -skew > limit:
            raise SignatureError(f"the signed timestamp is {-skew:.0f} s in the future, more "
                                 f"than the tolerance of {limit:.0f} s (check the clocks)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>, tolerance={self.tolerance})"


class _Hmac(Verifier):
    """A scheme whose key is the secret itself, as UTF-8."""

    def __init__(self, secret: str, tolerance: timedelta = DEFAULT_TOLERANCE) -> None:
        super().__init__(tolerance)
        if not secret:
            raise ValueError(f"the {self.scheme.value} scheme needs a non-empty secret")
        self._key = secret.encode()

    def _digest(self, content: bytes) -> bytes:
        return hmac.new(self._key, content, hashlib.sha256).digest()


class Zendesk(_Hmac):
    """Zendesk webhooks: base64 HMAC-SHA256 of the timestamp header followed by the body."""

    scheme = Scheme.ZENDESK
    SIGNATURE = "x-zendesk-webhook-signature"
    TIMESTAMP = "x-zendesk-webhook-signature-timestamp"
    DELIVERY = "x-zendesk-webhook-invocation-id"
    required = (SIGNATURE, TIMESTAMP)

    def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Delivery:
        found = _lower(headers)
        signature, stamp = _required(found, self.required)
        signed_at = _iso_time(stamp, self.TIMESTAMP)
        expected = base64.b64encode(self._digest(stamp.encode() + body))
        _same(expected, signature)
        self._fresh(signed_at, now)
        return Delivery(_delivery_id(found.get(self.DELIVERY), body), signed_at)


_HUBSPOT_DECODED = {
    "%3a": ":", "%2f": "/", "%3f": "?", "%40": "@", "%21": "!", "%24": "$",
    "%27": "'", "%28": "(", "%29": ")", "%2a": "*", "%2c": ",", "%3b": ";",
}
_HUBSPOT_ESCAPE = re.compile("|".join(_HUBSPOT_DECODED), re.IGNORECASE)


class HubSpotV3(_Hmac):
    """HubSpot v3: base64 HMAC-SHA256 of method + URI + body + timestamp (ms).

    The secret is the app's client secret. HubSpot sends no delivery id: the
    delivery is known by its body (which changes on a retry: ``attemptNumber``
    grows; the events' own ``eventId`` is what makes retries idempotent).
    """

    scheme = Scheme.HUBSPOT_V3
    SIGNATURE = "x-hubspot-signature-v3"
    TIMESTAMP = "x-hubspot-request-timestamp"
    required = (SIGNATURE, TIMESTAMP)

    def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Delivery:
        signature, stamp = _required(_lower(headers), self.required)
        try:
            signed_at = datetime.fromtimestamp(int(stamp) / 1000, UTC)
        except (ValueError, OverflowError, OSError):
            raise SignatureError(f"header {self.TIMESTAMP} is not Unix milliseconds: "
                                 f"{stamp[:40]!r}") from None
        uri = _HUBSPOT_ESCAPE.sub(lambda m: _HUBSPOT_DECODED[m.group().lower()], url)
        content = method.upper().encode() + uri.encode() + body + stamp.encode()
        _same(base64.b64encode(self._digest(content)), signature)
        self._fresh(signed_at, now)
        return Delivery(body_id(body), signed_at)


class StandardWebhooks(Verifier):
    """The Standard Webhooks specification (https://www.standardwebhooks.com).

    ``webhook-signature`` may list several signatures (while a sender rotates
    its secret); one matching ``v1`` signature is enough. Other versions
    (``v1a``, asymmetric) are ignored. The secret is decoded as
    :class:`~connectors.http_post.Signer` does for outgoing webhooks.
    """

    scheme = Scheme.STANDARD
    ID = "webhook-id"
    TIMESTAMP = "webhook-timestamp"
    SIGNATURE = "webhook-signature"
    required = (ID, TIMESTAMP, SIGNATURE)

    def __init__(self, secret: str, tolerance: timedelta = DEFAULT_TOLERANCE) -> None:
        super().__init__(tolerance)
        self._signer = Signer(secret)

    def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Delivery:
        message_id, stamp, signatures = _required(_lower(headers), self.required)
        try:
            seconds = int(stamp)
            signed_at = datetime.fromtimestamp(seconds, UTC)
        except (ValueError, OverflowError, OSError):
            raise SignatureError(f"header {self.TIMESTAMP} is not Unix seconds: "
                                 f"{stamp[:40]!r}") from None
        expected = self._signer.signature(message_id, seconds, body).encode()
        matched = False
        for given in signatures.split():
            # Every candidate is compared, so the time taken says nothing of which matched.
            matched |= hmac.compare_digest(expected, given.encode())
        if not matched:
            raise SignatureError("no signature in webhook-signature matches the body")
        self._fresh(signed_at, now)
        return Delivery(_delivery_id(message_id, body), signed_at)


class GitHub(_Hmac):
    """GitHub-style ``X-Hub-Signature-256: sha256=<hex>`` over the body; no timestamp."""

    scheme = Scheme.GITHUB
    SIGNATURE = "x-hub-signature-256"
    DELIVERY = "x-github-delivery"
    required = (SIGNATURE,)

    def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Delivery:
        found = _lower(headers)
        (signature,) = _required(found, self.required)
        if not signature.startswith("sha256="):
            raise SignatureError(f"header {self.SIGNATURE} must start with 'sha256='")
        expected = b"sha256=" + hmac.new(self._key, body, hashlib.sha256).hexdigest().encode()
        _same(expected, signature)
        return Delivery(_delivery_id(found.get(self.DELIVERY), body))


class Unsigned(Verifier):
    """No verification: for endpoints reachable only from trusted networks."""

    scheme = Scheme.NONE

    def verify(
        self, *, method: str, url: str, headers: Mapping[str, str], body: bytes, now: datetime
    ) -> Delivery:
        return Delivery(body_id(body))


_SCHEMES: dict[Scheme, type[_Hmac] | type[StandardWebhooks]] = {
    Scheme.ZENDESK: Zendesk,
    Scheme.HUBSPOT_V3: HubSpotV3,
    Scheme.STANDARD: StandardWebhooks,
    Scheme.GITHUB: GitHub,
}


def verifier(
    scheme: Scheme | str, secret: str | None, *, tolerance: timedelta = DEFAULT_TOLERANCE
) -> Verifier:
    """The verifier of ``scheme`` with ``secret``.

    Raises:
        ValueError: an unknown scheme; a scheme other than ``none`` without a
            secret; ``none`` with a secret (a configured secret must never be
            silently ignored); a secret the scheme cannot use.
    """
    try:
        kind = Scheme(scheme)
    except ValueError:
        known = ", ".join(s.value for s in Scheme)
        raise ValueError(f"unknown signature scheme {scheme!r}; known: {known}") from None
    if kind is Scheme.NONE:
        if secret is not None:
            raise ValueError("scheme 'none' takes no secret: with a secret configured, "
                             "choose the scheme the sender signs with")
        return Unsigned(tolerance)
    if not secret:
        raise ValueError(f"scheme {kind.value!r} needs a secret; use scheme 'none' to "
                         f"accept unsigned deliveries")
    return _SCHEMES[kind](secret, tolerance)


def verify(
    scheme: Scheme | str,
    secret: str | None,
    *,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> Delivery:
    """Verify one request; see the module's table for what each scheme checks.

    Raises:
        SignatureError: the request is not signed as the scheme requires.
        ValueError: the scheme and secret do not go together (see :func:`verifier`).
    """
    return verifier(scheme, secret, tolerance=tolerance).verify(
        method=method, url=url, headers=headers, body=body, now=now
    )


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _required(headers: dict[str, str], names: tuple[str, ...]) -> list[str]:
    values = []
    for name in names:
        value = headers.get(name, "").strip()
        if not value:
            raise SignatureError(f"missing header {name}")
        values.append(value)
    return values


def _same(expected: bytes, given: str) -> None:
    if not hmac.compare_digest(expected, given.encode()):
        raise SignatureError("the signature does not match the body")


def _iso_time(text: str, header: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SignatureError(f"header {header} is not an ISO 8601 time: {text[:40]!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _delivery_id(given: str | None, body: bytes) -> str:
    given = (given or "").strip()
    return given if 0 < len(given) <= _MAX_ID and given.isprintable() else body_id(body)

