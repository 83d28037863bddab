"""Webhook signature schemes, checked against signatures made here from the vendors' formulas.

The ``sign_*`` helpers below compute each vendor's documented formula with
hmac/hashlib/base64 directly, never with :mod:`connectors.signatures`; the
webhook endpoint tests sign their requests with them too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from connectors.signatures import (
    Delivery,
    Scheme,
    body_id,
    verifier,
    verify,
)
from shadow.core.errors import ShadowError, SignatureError

NOW = datetime(2024, 5, 8, 9, 15, tzinfo=UTC)
URL = "https://shadow.example.com/hooks/test"
BODY = b'{"ticket": {"id": "48231", "subject": "Charged twice"}}'
SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard webhooks key, 24+ bytes").decode()
SCHEMES = ["zendesk", "hubspot_v3", "standard", "github"]
TIMESTAMPED = ["zendesk", "hubspot_v3", "standard"]


# -- the vendors' formulas -----------------------------------------------------


def sign_zendesk(secret: str, body: bytes, at: datetime, *,
                 invocation: str = "8350205582") -> dict[str, str]:
    """base64(HMAC-SHA256(secret, TIMESTAMP + BODY)), the timestamp ISO 8601 in UTC."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    digest = hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()
    return {
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": stamp,
        "X-Zendesk-Webhook-Invocation-Id": invocation,
        "X-Zendesk-Webhook-Id": "01F1KRFQ6BG29CNWFR60NK5FNY",
        "X-Zendesk-Account-Id": "123456",
    }


def sign_hubspot(secret: str, method: str, uri: str, body: bytes, at: datetime) -> dict[str, str]:
    """base64(HMAC-SHA256(secret, method + uri + body + timestamp)), timestamp in ms.

    ``uri`` is the URL HubSpot called, with the characters HubSpot lists decoded.
    """
    millis = str(int(at.timestamp() * 1000))
    source = method + uri + body.decode() + millis
    digest = hmac.new(secret.encode(), source.encode(), hashlib.sha256).digest()
    return {
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": millis,
        "X-HubSpot-Signature-Version": "v1",
    }


def sign_standard(secret: str, body: bytes, at: datetime, *,
                  message_id: str = "msg_2gMzJ0b8bLQ4fX0GwXv2Yt7Ur1a") -> dict[str, str]:
    """Standard Webhooks: v1,base64(HMAC-SHA256(key, f"{id}.{ts}.{body}")), whsec_ key in base64."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    timestamp = str(int(at.timestamp()))
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def sign_github(secret: str, body: bytes, *,
                delivery: str = "72d3162e-cc78-11e3-81ab-4c9367dc0958") -> dict[str, str]:
    """X-Hub-Signature-256: sha256=hex(HMAC-SHA256(secret, body))."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": "issues",
    }


def sign(scheme: str, secret: str, body: bytes, at: datetime, *, url: str = URL,
         delivery: str = "d-1") -> dict[str, str]:
    """Headers for ``body`` as ``scheme``'s vendor signs it, with delivery id ``delivery``."""
    if scheme == "zendesk":
        return sign_zendesk(secret, body, at, invocation=delivery)
    if scheme == "hubspot_v3":
        return sign_hubspot(secret, "POST", url, body, at)
    if scheme == "standard":
        return sign_standard(secret, body, at, message_id=delivery)
    if scheme == "github":
        return sign_github(secret, body, delivery=delivery)
    raise AssertionError(scheme)


def secret_for(scheme: str) -> str:
    return STANDARD_SECRET if scheme == "standard" else SECRET


def check(scheme: str, headers: dict[str, str], body: bytes = BODY, *,
          secret: str | None = None, url: str = URL, now: datetime = NOW,
          method: str = "POST") -> Delivery:
    return verify(scheme, secret if secret is not None else secret_for(scheme), method=method,
                  url=url, headers=headers, body=body, now=now)


# -- every scheme ---------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_delivery_signed_by_the_vendors_formula_is_accepted(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW - timedelta(seconds=3))

    delivery = check(scheme, headers)

    expected = {"zendesk": "d-1", "hubspot_v3": body_id(BODY), "standard": "d-1",
                "github": "d-1"}[scheme]
    assert delivery.id == expected


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_signature_made_with_another_secret_is_refused(scheme: str) -> None:
    other = "whsec_" + base64.b64encode(b"another key entirely").decode()
    headers = sign(scheme, other if scheme == "standard" else "another secret", BODY, NOW)

    with pytest.raises(SignatureError, match="does not match|no signature"):
        check(scheme, headers)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_body_changed_after_signing_is_refused(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW)

    with pytest.raises(SignatureError):
        check(scheme, headers, BODY.replace(b"48231", b"48232"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_delivery_without_its_signature_header_is_refused(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW)
    unsigned = {name: value for name, value in headers.items()
                if "signature" not in name.lower()}

    with pytest.raises(SignatureError, match="missing header"):
        check(scheme, unsigned)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_delivery_with_no_headers_at_all_is_refused(scheme: str) -> None:
    with pytest.raises(SignatureError, match="missing header"):
        check(scheme, {})


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_a_signature_older_than_the_tolerance_is_refused(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW - timedelta(minutes=5, seconds=2))

    with pytest.raises(SignatureError, match="old"):
        check(scheme, headers)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_a_signature_from_further_in_the_future_than_the_tolerance_is_refused(
    scheme: str,
) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW + timedelta(minutes=6))

    with pytest.raises(SignatureError, match="future"):
        check(scheme, headers)


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_the_tolerance_is_configurable(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW - timedelta(seconds=90))
    strict = verifier(scheme, secret_for(scheme), tolerance=timedelta(minutes=1))
    lenient = verifier(scheme, secret_for(scheme), tolerance=timedelta(minutes=2))

    assert lenient.verify(method="POST", url=URL, headers=headers, body=BODY, now=NOW)
    with pytest.raises(SignatureError, match="90 s old"):
        strict.verify(method="POST", url=URL, headers=headers, body=BODY, now=NOW)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_header_names_are_matched_whatever_their_case(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW)
    shouted = {name.upper(): value for name, value in headers.items()}

    assert check(scheme, shouted).id == check(scheme, headers).id


@pytest.mark.parametrize("scheme", TIMESTAMPED)
def test_a_timestamp_in_the_wrong_format_is_refused(scheme: str) -> None:
    headers = sign(scheme, secret_for(scheme), BODY, NOW)
    name = next(n for n in headers if "timestamp" in n.lower())
    headers[name] = "yesterday"

    with pytest.raises(SignatureError, match="timestamp|Timestamp|not"):
        check(scheme, headers)


def test_a_signature_error_is_a_shadow_error_with_its_reason() -> None:
    with pytest.raises(ShadowError) as raised:
        check("github", {})
    assert isinstance(raised.value, SignatureError)
    assert raised.value.reason == "missing header x-hub-signature-256"


# -- Zendesk --------------------------------------------------------------------


def test_zendesk_signs_the_timestamp_header_text_followed_by_the_body() -> None:
    stamp = "2024-05-08T09:14Z"  # {{...with_timestamp}} style: minutes, no seconds
    digest = hmac.new(SECRET.encode(), stamp.encode() + BODY, hashlib.sha256).digest()
    headers = {"X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
               "X-Zendesk-Webhook-Signature-Timestamp": stamp}

    delivery = check("zendesk", headers)

    assert delivery.signed_at == datetime(2024, 5, 8, 9, 14, tzinfo=UTC)
    assert delivery.id == body_id(BODY)  # no invocation id: the body stands in


def test_zendesk_body_then_timestamp_is_not_the_zendesk_formula() -> None:
    stamp = "2024-05-08T09:14:00Z"
    digest = hmac.new(SECRET.encode(), BODY + stamp.encode(), hashlib.sha256).digest()
    headers = {"X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
               "X-Zendesk-Webhook-Signature-Timestamp": stamp}

    with pytest.raises(SignatureError, match="does not match"):
        check("zendesk", headers)


# -- HubSpot v3 -----------------------------------------------------------------


def test_hubspot_signs_the_method_and_the_full_url() -> None:
    headers = sign_hubspot(SECRET, "POST", URL, BODY, NOW)

    with pytest.raises(SignatureError):
        check("hubspot_v3", headers, url="https://other.example.com/hooks/test")
    with pytest.raises(SignatureError):
        check("hubspot_v3", headers, method="PUT")


def test_hubspot_decodes_the_listed_escapes_in_the_url_before_signing() -> None:
    called = "https://shadow.example.com/hooks/test?portal=62515%3Aeu&tag=%28vip%29%2Cnew"
    decoded = "https://shadow.example.com/hooks/test?portal=62515:eu&tag=(vip),new"
    headers = sign_hubspot(SECRET, "POST", decoded, BODY, NOW)

    assert check("hubspot_v3", headers, url=called).id == body_id(BODY)


def test_hubspot_timestamps_are_milliseconds() -> None:
    headers = sign_hubspot(SECRET, "POST", URL, BODY, NOW - timedelta(seconds=30))

    delivery = check("hubspot_v3", headers)

    assert delivery.signed_at == NOW - timedelta(seconds=30)


def test_hubspot_refuses_a_request_older_than_five_minutes_by_default() -> None:
    headers = sign_hubspot(SECRET, "POST", URL, BODY, NOW - timedelta(minutes=5, seconds=1))

    with pytest.raises(SignatureError, match="301 s old"):
        check("hubspot_v3", headers)


# -- Standard Webhooks ------------------------------------------------------------


def test_standard_webhooks_accepts_the_specifications_test_vector() -> None:
    # The example in the Standard Webhooks specification's reference libraries.
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    at = datetime.fromtimestamp(1614265330, UTC)

    delivery = verify("standard", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", method="POST",
                      url=URL, headers=headers, body=b'{"test": 2432232314}', now=at)

    assert delivery == Delivery("msg_p5jXN8AQM9LWM0D4loKWxJek", at)


def test_standard_webhooks_accepts_any_one_of_several_signatures() -> None:
    headers = sign_standard(STANDARD_SECRET, BODY, NOW)
    valid = headers["webhook-signature"]
    headers["webhook-signature"] = f"v1,bm90IHRoZSByaWdodCBvbmU= v1a,c29tZXRoaW5nIGVsc2U= {valid}"

    assert check("standard", headers).id == "msg_2gMzJ0b8bLQ4fX0GwXv2Yt7Ur1a"


def test_standard_webhooks_refuses_when_no_listed_signature_matches() -> None:
    headers = sign_standard(STANDARD_SECRET, BODY, NOW)
    headers["webhook-signature"] = "v1,bm90IHRoZSByaWdodCBvbmU= v2," + \
        headers["webhook-signature"].removeprefix("v1,")

    with pytest.raises(SignatureError, match="no signature"):
        check("standard", headers)


def test_standard_webhooks_signs_the_message_id() -> None:
    headers = sign_standard(STANDARD_SECRET, BODY, NOW)
    headers["webhook-id"] = "msg_someone_else"

    with pytest.raises(SignatureError):
        check("standard", headers)


def test_a_standard_webhooks_secret_without_the_prefix_is_the_key_itself() -> None:
    raw = "plain-shared-secret"
    content = f"msg_1.{int(NOW.timestamp())}.".encode() + BODY
    digest = hmac.new(raw.encode(), content, hashlib.sha256).digest()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(NOW.timestamp())),
               "webhook-signature": "v1," + base64.b64encode(digest).decode()}

    assert check("standard", headers, secret=raw).id == "msg_1"


# -- GitHub ---------------------------------------------------------------------


def test_github_accepts_the_example_in_its_documentation() -> None:
    headers = {"X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c4"
                                      "6f4379c8b043e17"}

    delivery = verify("github", "It's a Secret to Everybody", method="POST", url=URL,
                      headers=headers, body=b"Hello, World!", now=NOW)

    assert delivery == Delivery(body_id(b"Hello, World!"))


def test_github_refuses_a_signature_without_its_algorithm_prefix() -> None:
    headers = sign_github(SECRET, BODY)
    headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].removeprefix("sha256=")

    with pytest.raises(SignatureError, match="sha256="):
        check("github", headers)


def test_github_signs_no_timestamp_so_age_does_not_matter() -> None:
    headers = sign_github(SECRET, BODY, delivery="abc")

    assert check("github", headers, now=NOW + timedelta(days=30)).id == "abc"


# -- no signature, and configuration mistakes -------------------------------------


def test_scheme_none_accepts_anything_and_knows_it_by_its_body() -> None:
    delivery = verify("none", None, method="POST", url=URL, headers={}, body=BODY, now=NOW)

    assert delivery == Delivery(body_id(BODY))


def test_scheme_none_refuses_a_secret_so_none_is_ever_ignored() -> None:
    with pytest.raises(ValueError, match="takes no secret"):
        verifier("none", "s3cret")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_signing_scheme_needs_a_secret(scheme: str) -> None:
    with pytest.raises(ValueError, match="needs a secret"):
        verifier(scheme, None)
    with pytest.raises(ValueError, match="needs a secret"):
        verifier(scheme, "")


def test_an_unknown_scheme_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="zendesk, hubspot_v3, standard, github, none"):
        verifier("stripe", "s3cret")


def test_a_whsec_secret_must_continue_in_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        verifier(Scheme.STANDARD, "whsec_not base64!")


def test_the_tolerance_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        verifier("zendesk", SECRET, tolerance=timedelta(0))


def test_a_verifier_never_shows_its_secret() -> None:
    shown = repr(verifier("zendesk", "hunter2-secret"))

    assert "hunter2" not in shown


def test_a_delivery_id_too_long_to_be_one_is_replaced_by_the_bodys() -> None:
    headers = sign_github(SECRET, BODY, delivery="x" * 500)

    assert check("github", headers).id == body_id(BODY)
