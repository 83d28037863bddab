"""POSTing JSON to a webhook: Standard Webhooks signatures, retries with backoff.

Shared by :class:`~connectors.sinks.WebhookSink` (live decisions) and
:class:`~rollout.notify.WebhookNotifier` (rollout announcements), so both sign
and retry the same way.

Standard library only (``http.client``): the callers are synchronous (the
pipeline's publish step, the controller), and one keep-alive connection per
destination is all they need. Environment proxy settings are not consulted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

import structlog

from shadow.core.errors import SinkError
from shadow.core.models import utc_now
from shadow.core.retry import RetryPolicy, delay, jitter

log = structlog.get_logger(__name__)

SECRET_PREFIX = "whsec_"
_RESERVED = frozenset({
    "content-type", "content-length", "host", "transfer-encoding",
    "webhook-id", "webhook-timestamp", "webhook-signature",
})
_MAX_REPLY = 1 << 20
"""More of a reply than this is not read; the connection is dropped instead."""


class Signer:
    """Signs messages with the Standard Webhooks scheme (https://www.standardwebhooks.com).

    The signature is ``v1,`` and the base64 HMAC-SHA256 of
    ``f"{id}.{timestamp}.{body}"``. A secret ``whsec_<base64>`` carries its key
    base64-encoded (as Standard Webhooks libraries generate them); any other
    secret is itself the key, as UTF-8.

    >>> Signer("whsec_c2VjcmV0").signature("msg_1", 1714557600, b"{}")[:3]
    'v1,'

    Raises:
        ValueError: the secret is empty, or ``whsec_`` is not followed by base64.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a signing secret must not be empty")
        if secret.startswith(SECRET_PREFIX):
            try:
                key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
            except binascii.Error as exc:
                raise ValueError(f"a secret starting {SECRET_PREFIX!r} must continue in "
                                 f"base64: {exc}") from exc
            if not key:
                raise ValueError(f"the secret has no key after {SECRET_PREFIX!r}")
        else:
            key = secret.encode()
        self._key = key

    def signature(self, message_id: str, timestamp: int, body: bytes) -> str:
        content = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")

    def __repr__(self) -> str:
        return "Signer(<secret>)"


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int | None
    """None when no response arrived (connection error, timeout)."""
    detail: str
    retry_after: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


class JsonPoster:
    """POSTs JSON bodies to one URL, each until it is accepted (2xx) or attempts run out.

    Every request carries ``webhook-id`` (the caller's message id, the same on
    every retry, for receivers to dedupe by) and ``webhook-timestamp`` (unix
    seconds); with a ``secret`` also ``webhook-signature``, made afresh on each
    attempt so that receivers checking the timestamp's age accept late retries.

    Retried, with full-jitter exponential backoff (a ``Retry-After``, in
    seconds or as an HTTP date, is honoured; every wait is at most
    ``max_wait_s``; :func:`shadow.core.retry.delay`): connection errors,
    timeouts, 429 and 5xx. Not retried: other 4xx (the receiver refuses this
    message; asking again will not change its mind) and 3xx (redirects are not
    followed: a POST turned into a GET would look delivered). ``timeout_s``
    bounds each socket operation (connecting, sending, each read), not a whole
    attempt.

    Constructing one does no I/O. Not thread-safe: it keeps one connection open
    between posts; :meth:`close` closes it.

    Raises:
        ValueError: the URL is not ``http(s)://host...``, or an option is out of range.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        secret: str | None = None,
        timeout_s: float = 10.0,
        max_attempts: int = 3,
        backoff_s: float = 0.2,
        max_wait_s: float = 30.0,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        uniform: Callable[[float, float], float] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a webhook URL must be http(s)://host/..., got {url!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put webhook credentials in headers, not in the URL")
        if timeout_s <= 0 or max_attempts < 1 or backoff_s < 0 or max_wait_s < 0:
            raise ValueError("need timeout_s > 0, max_attempts >= 1, backoff_s >= 0, "
                             "max_wait_s >= 0")
        clashing = sorted(name for name in (headers or {}) if name.lower() in _RESERVED)
        if clashing:
            raise ValueError(f"headers {clashing} are set by the webhook client itself")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.display_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        """The URL without its query string, which may hold a token: for messages and logs."""
        self._headers = {"user-agent": "shadow-rollout", **(headers or {})}
        self._signer = Signer(secret) if secret is not None else None
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.backoff_s, self.max_wait_s = backoff_s, max_wait_s
        self._retry = RetryPolicy(max_attempts=max_attempts, base_s=backoff_s,
                                  max_backoff_s=max_wait_s, max_retry_after_s=max_wait_s)
        self._now, self._sleep = now, sleep
        self._uniform = uniform or jitter()
        self._connection: http.client.HTTPConnection | None = None
        self._tls: ssl.SSLContext | None = None

    def post(self, body: bytes, *, message_id: str) -> int:
        """POST ``body`` (JSON) until it is accepted; returns the accepting status.

        Raises:
            SinkError: the receiver refused it, or kept failing for every attempt.
        """
        for attempt in range(1, self.max_attempts + 1):
            answer = self._attempt(body, message_id)
            if answer.accepted:
                assert answer.status is not None
                return answer.status
            if not answer.retryable:
                raise SinkError(f"{self.display_url} refused message {message_id}: "
                                f"{answer.detail}")
            if attempt == self.max_attempts:
                break
            wait = delay(self._retry, attempt, answer.retry_after, now=self._now,
                         uniform=self._uniform)
            log.warning("webhook delivery failed, retrying", url=self.display_url,
                        message_id=message_id, attempt=attempt, wait_s=round(wait, 3),
                        error=answer.detail)
            self._sleep(wait)
        raise SinkError(f"{self.display_url} did not accept message {message_id} in "
                        f"{self.max_attempts} attempts: {answer.detail}")

    def close(self) -> None:
        """Close the kept-alive connection, if any; the poster may still be used after."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _attempt(self, body: bytes, message_id: str) -> _Answer:
        timestamp = int(self._now().timestamp())
        headers = {**self._headers, "content-type": "application/json",
                   "webhook-id": message_id, "webhook-timestamp": str(timestamp)}
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.signature(message_id, timestamp, body)
        reused = self._connection is not None
        try:
            return self._exchange(body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if not reused:
                return _Answer(None, f"connection failed: {exc!r}")
            # The receiver closed the kept-alive connection while it was idle:
            # that is no failure of this message, so ask again on a new one.
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return _Answer(None, f"connection failed: {exc!r}")
        try:
            return self._exchange(body, headers)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return _Answer(None, f"connection failed: {exc!r}")

    def _exchange(self, body: bytes, headers: dict[str, str]) -> _Answer:
        connection = self._connection or self._connect()
        connection.request("POST", self._target, body=body, headers=headers)
        response = connection.getresponse()
        reply = response.read(_MAX_REPLY)
        if response.will_close or not response.isclosed():
            self.close()
        snippet = reply[:200].decode("utf-8", "replace")
        return _Answer(response.status, f"HTTP {response.status} {snippet}".rstrip(),
                       response.getheader("retry-after"))

    def _connect(self) -> http.client.HTTPConnection:
        # http.client: one kept-alive connection, used synchronously from one thread.
        connection: http.client.HTTPConnection
        if self._https:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            connection = http.client.HTTPSConnection(self._host, self._port,
                                                     timeout=self.timeout_s, context=self._tls)
        else:
            connection = http.client.HTTPConnection(self._host, self._port,
                                                    timeout=self.timeout_s)
        self._connection = connection
        return connection
