"""One blocking JSON POST with retries, for calls made one at a time (an LLM judge, an
agent's model step).

Connection errors, timeouts, 408, 429 and 5xx are retried up to the policy's
``max_attempts`` in all, waiting as :func:`shadow.core.retry.delay` says (a
``Retry-After`` honoured); other answers are refused at once. No proxies are taken
from the environment, like the candidates' client.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from shadow.core.errors import ShadowError
from shadow.core.models import utc_now
from shadow.core.retry import RetryPolicy, Uniform, delay, jitter

__all__ = ["PostError", "post_json"]


class PostError(ShadowError):
    """The call failed after its retries, was refused, or answered something not JSON."""


def post_json(url: str, body: Any, *, headers: Mapping[str, str], timeout_s: float,
              retry: RetryPolicy, refused_hint: str = "",
              sleep: Callable[[float], None] = time.sleep,
              now: Callable[[], datetime] = utc_now, uniform: Uniform | None = None) -> Any:
    """POST ``body`` as JSON to ``url`` and return the answer's JSON.

    ``refused_hint`` is added to the message of an answer that is not retried (where to
    look: a wrong URL, model or key). ``sleep``, ``now`` and ``uniform`` are for tests.

    Raises:
        PostError: as the class says; the message names the URL or the failure and the
            number of attempts.
    """
    request = urllib.request.Request(
        url, data=orjson.dumps(body),
        headers={"content-type": "application/json", **headers}, method="POST")
    # urllib: one blocking call at a time, no connection worth keeping between them.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    draw = uniform or jitter()
    attempt = 1
    while True:
        try:
            with opener.open(request, timeout=timeout_s) as response:
                return orjson.loads(response.read())
        except orjson.JSONDecodeError as exc:
            raise PostError(f"the response is not JSON: {exc}") from exc
        except urllib.error.HTTPError as exc:
            exc.close()
            retryable = exc.code in (408, 429) or exc.code >= 500
            problem = f"{url} answered {exc.code}"
            if not retryable and refused_hint:
                problem += f" ({refused_hint})"
            asked = exc.headers.get("retry-after")
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            retryable, problem, asked = True, f"{type(exc).__name__}: {exc}", None
        if not retryable or attempt >= retry.max_attempts:
            raise PostError(f"{problem} (after {attempt} attempt(s))")
        sleep(delay(retry, attempt, asked, now=now, uniform=draw))
        attempt += 1
