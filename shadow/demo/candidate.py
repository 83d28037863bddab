"""A sample candidate for the demo workload: a keyword classifier, imperfect on purpose.

It scores each category by counting keyword stems in the subject (weighted
double) and the body, and answers the best-scoring one. Its flaws are chosen to
show what a shadow-mode report reveals:

* It knows English and French keywords only. German tickets are matched solely
  through loanwords ("Login", "Bug", "Feature", "Tracking") and otherwise fall
  back to the most common category, so agreement on ``language=de`` is far
  below the rest: the "no segment left behind" gate should catch it.
* Tickets that mention two topics, or none, are answered with a low confidence,
  so raising a confidence threshold trades coverage for agreement visibly.

It is deterministic: the only variation besides the text is a small jitter on
the confidence, derived from a hash of ``event_id``.

Use it as ``shadow.demo.candidate:classify``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

from shadow.core.models import Event

FALLBACK: Final = "billing"
"""Answered when no keyword matches: the most frequent category in the (imagined) training data."""

_KEYWORDS: Final[dict[str, tuple[str, ...]]] = {
    "billing": (
        "invoice", "charge", "refund", "payment", "billed", "billing", "credit card", "vat",
        "receipt", "bank statement", "facture", "rembours", "paiement", "prélev", "débit", "tva",
    ),
    "login": (
        "log in", "login", "password", "sign in", "sign-in", "2fa", "two-factor", "locked",
        "connexion", "connecter", "mot de passe", "réinitialisation", "identification", "bloqué",
    ),
    "bug": (
        "crash", "error", "bug", "broken", "freez", "fail", "blank page", "unresponsive",
        "plante", "erreur", "échou", "fige", "cassé", "ne fonctionne plus", "ne répondent",
    ),
    "feature_request": (
        "feature", "suggest", "would be great", "would love", "roadmap", "could you add",
        "please add", "request", "idea", "option", "fonctionnalité", "aimerions", "ajouter",
        "idée", "souhait", "feuille de route",
    ),
    "shipping": (
        "deliver", "shipped", "shipping", "package", "parcel", "tracking", "courier", "arrived",
        "colis", "livr", "suivi", "transporteur", "expédi",
    ),
    "cancellation": (
        "cancel", "close my account", "terminate", "unsubscribe", "renewal", "end our contract",
        "résili", "annul", "fermer mon compte", "renouvellement", "mettre fin",
    ),
}
# Stems match at the start of a word only ("fail" matches "failing", not "unfailing").
_PATTERNS: Final = {
    label: re.compile(r"\b(?:" + "|".join(re.escape(k) for k in words) + ")")
    for label, words in _KEYWORDS.items()
}


def classify(event: Event) -> dict[str, Any]:
    """Return ``{"category": label, "confidence": 0..1}`` for one ticket event.

    Confidence grows with the number of matching keywords and with the share of
    them that point to the winning category; with no match it is at most 0.2.
    """
    subject = str(event.payload.get("subject", "")).lower()
    body = str(event.payload.get("body", "")).lower()
    scores = {
        label: 2 * len(pattern.findall(subject)) + len(pattern.findall(body))
        for label, pattern in _PATTERNS.items()
    }
    # Ties go to the category listed first, so the answer never depends on chance.
    label = max(scores, key=lambda name: scores[name])
    top = scores[label]
    jitter = _jitter(event.event_id)
    if top == 0:
        return {"category": FALLBACK, "confidence": round(0.15 + jitter, 3)}
    share = top / sum(scores.values())
    strength = 1.0 - 0.6**top
    confidence = min(0.99, max(0.05, 0.1 + 0.9 * share * strength + jitter))
    return {"category": label, "confidence": round(confidence, 3)}


def _jitter(event_id: str) -> float:
    """A fixed offset in [-0.04, 0.04] per event, so confidences do not clump."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=2).digest()
    return (int.from_bytes(digest, "big") / 65535 - 0.5) * 0.08
