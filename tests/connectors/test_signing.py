"""What connectors.signing signs, connectors.signatures accepts, in every scheme."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from connectors.signatures import Scheme, SignatureError, verify
from connectors.signing import sign

AT = datetime(2026, 5, 8, 9, 14, 5, tzinfo=UTC)
URL = "https://hooks.example.com/hooks/tickets?a=1%3A2"
BODY = b'{"ticket": {"id": "48231"}}'
SECRETS = {Scheme.ZENDESK: "zendesk secret", Scheme.HUBSPOT_V3: "hubspot client secret",
           Scheme.STANDARD: "whsec_MDEyMzQ1Njc4OWFiY2RlZg==", Scheme.GITHUB: "gh secret",
           Scheme.NONE: None}


@pytest.mark.parametrize("scheme", list(Scheme))
def test_a_signed_delivery_verifies(scheme: Scheme) -> None:
    headers = sign(scheme, SECRETS[scheme], url=URL, body=BODY, at=AT, delivery_id="d-1")
    verify(scheme, SECRETS[scheme], method="POST", url=URL, headers=headers, body=BODY,
           now=AT + timedelta(seconds=30))


@pytest.mark.parametrize("scheme", [s for s in Scheme if s is not Scheme.NONE])
def test_a_delivery_signed_with_another_secret_does_not(scheme: Scheme) -> None:
    other = "whsec_c29tZXRoaW5nIGVsc2U=" if scheme is Scheme.STANDARD else "another secret"
    headers = sign(scheme, other, url=URL, body=BODY, at=AT, delivery_id="d-1")
    with pytest.raises(SignatureError):
        verify(scheme, SECRETS[scheme], method="POST", url=URL, headers=headers, body=BODY,
               now=AT)


def test_a_signed_scheme_without_a_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a secret"):
        sign("zendesk", None, url=URL, body=BODY, at=AT, delivery_id="d-1")
