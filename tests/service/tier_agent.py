"""A support desk's agent for the daemon's tier fallback test, loaded by ``shadow run`` as
a callable candidate: it tags a tenth of the tickets and drafts replies for the rest.

Its tags go wrong from the ticket number in the environment variable
:data:`TAGS_WRONG_FROM` on (the injected degradation); its replies stay right.
"""

from __future__ import annotations

import os
from typing import Any

from shadow.core.models import Event

TAGS_WRONG_FROM = "DESK_TAGS_WRONG_FROM"
"""The first ticket number whose tag is wrong; the daemon's environment must set it."""
WRONG_TAG = "tag-wrong"


def is_tag(i: int) -> bool:
    """Whether ticket ``i`` only needs a tag (a tenth of them) rather than a reply."""
    return i % 10 == 0


def right(i: int) -> str:
    """The answer a person gives for ticket ``i``: its tag, or its reply."""
    return f"tag-{i}" if is_tag(i) else f"reply-{i}"


def agent(event: Event) -> dict[str, Any]:
    """Tag or reply to the ticket numbered ``payload.ticket``."""
    i = int(event.payload["ticket"])
    if is_tag(i):
        answer = WRONG_TAG if i >= int(os.environ[TAGS_WRONG_FROM]) else right(i)
        return {"answer": answer, "actions": [{"tool": "add_tag", "arguments": {"tag": answer}}]}
    return {"answer": right(i),
            "actions": [{"tool": "send_reply", "arguments": {"body": right(i)}}]}
