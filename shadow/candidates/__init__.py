"""Candidates: the AI system under test, by adapter.

- :class:`CallableCandidate`: a Python function in this process;
- :class:`HttpCandidate`: a JSON endpoint, called concurrently with timeouts,
  retries and a circuit breaker;
- :class:`ChatCandidate`: a prompt against an OpenAI-compatible chat API, with
  the same call machinery, structured output, tokens and cost;
- :class:`AgentCandidate`: a multi-step agent over an MCP server's tools, only the
  allowlisted lookups executed.
"""

from shadow.candidates.agent import AgentCandidate
from shadow.candidates.base import Candidate, confidence_of
from shadow.candidates.callable import CallableCandidate, batch
from shadow.candidates.chat import ChatCandidate
from shadow.candidates.constraints import Checks
from shadow.candidates.http import HttpCandidate
from shadow.config.candidates import (
    AgentCandidateSpec,
    CandidateSpec,
    ChatCandidateSpec,
    HttpCandidateSpec,
)

__all__ = [
    "AgentCandidate",
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
        ConfigError: a callable (the candidate or a custom check) cannot be loaded.
    """
    candidate: Candidate
    if isinstance(spec, HttpCandidateSpec):
        candidate = HttpCandidate.from_spec(spec)
    elif isinstance(spec, ChatCandidateSpec):
        candidate = ChatCandidate.from_spec(spec)
    elif isinstance(spec, AgentCandidateSpec):
        candidate = AgentCandidate.from_spec(spec)
    else:
        candidate = CallableCandidate.from_spec(spec)
    candidate.checks = Checks.from_specs(spec.checks)
    return candidate
