"""The HTTP candidate: a JSON endpoint of the team's own, called in shadow mode.

Each event is POSTed, as canonical JSON or shaped by the ``body`` template,
and the response JSON, or the value at ``output_path`` in it, is the output.
"""

from __future__ import annotations

from typing import Any

from shadow.candidates.remote import Attempt, RemoteCandidate, failure
from shadow.config.candidates import HttpCandidateSpec
from shadow.core.models import ErrorKind, Event
from shadow.core.paths import MISSING, get_path
from shadow.core.templates import render


def canonical(event: Event) -> dict[str, Any]:
    """The event as canonical JSON, which is also what templates are filled from."""
    data = event.model_dump(mode="json")
    data["routing_key"] = event.route
    return data


class HttpCandidate(RemoteCandidate):
    spec: HttpCandidateSpec

    def __init__(self, spec: HttpCandidateSpec, **options: Any) -> None:
        super().__init__(spec, **options)
        self.url = spec.url

    @classmethod
    def from_spec(cls, spec: HttpCandidateSpec) -> HttpCandidate:
        return cls(spec)

    def request(self, event: Event) -> Any:
        if self.spec.body is None:
            return canonical(event)
        return render(self.spec.body, canonical(event))

    def read(self, answer: Any, status: int, ttfb: float, raw: bytes) -> Attempt:
        path = self.spec.output_path
        output = answer if path is None else get_path(answer, path)
        if output is MISSING:
            return failure(ErrorKind.MALFORMED_RESPONSE, "NoOutput",
                           f"response has no value at {path!r}", status=status, ttfb=ttfb, raw=raw)
        return Attempt(output=output, status=status, ttfb_ms=ttfb)
