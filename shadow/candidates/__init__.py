"""Candidates: the AI system under test, by adapter.

- :class:`CallableCandidate`: a Python function in this process;
- :class:`HttpCandidate`: a JSON endpoint, called concurrently with timeouts,
  retries and a circuit breaker;
- :class:`ChatCandidate`: a prompt against an OpenAI-compatible chat API, with
  the same call machinery, structured output, tokens and cost.
"""

from shadow.candidates.base import Candidate, confidence_of
from shadow.candidates.callable import CallableCandidate, batch
from shadow.candidates.chat import ChatCandidate
from shadow.candidates.http import HttpCandidate
from shadow.config import CandidateSpec, ChatCandidateSpec, HttpCandidateSpec

__all__ = [
    "CallableCandidate",
    "Candidate",
    "ChatCandidate",
    "HttpCandidate",
    "batch",
    "build_candidate",
    "confidence_of",
]


def build_candidate(spec: CandidateSpec) -> Candidate:
    """The candidate a configuration describes; no I/O until it is opened.

    Raises:
        ConfigError: a callable cannot be loaded.
    """
    if isinstance(spec, HttpCandidateSpec):
        return HttpCandidate.from_spec(spec)
    if isinstance(spec, ChatCandidateSpec):
        return ChatCandidate.from_spec(spec)
    return CallableCandidate.from_spec(spec)
