"""The ``judge`` comparator: an LLM asked, with a rubric, whether the AI's output
would do instead of the human's outcome.

It speaks the OpenAI-compatible chat-completions API, asks for a strict JSON
verdict, and caches verdicts in SQLite by content hash, so a re-run costs
nothing. Configured as described in :mod:`shadow.compare.text`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from shadow.candidates.remote import expand
from shadow.compare.base import Judgement, SpecComparator
from shadow.config.comparators import JudgeSpec
from shadow.core.errors import ConfigError, ShadowError
from shadow.core.models import utc_now
from shadow.core.paths import get_path
from shadow.core.posting import PostError, post_json
from shadow.core.retry import RetryPolicy, jitter
from shadow.core.templates import TemplateError, render

__all__ = ["DEFAULT_RUBRIC", "Judge", "JudgeError"]

log = structlog.get_logger(__name__)

DEFAULT_RUBRIC = """\
You compare an AI system's output with what a human decided for the same case.
Answer "agree" when the AI output would be an acceptable substitute for the human's:
the same decision, the same facts and meaning, nothing important missing or added,
even if it is worded differently. Otherwise answer "disagree".

AI output:
{{ output }}

Human outcome:
{{ outcome }}

Reply with JSON only: {"verdict": "agree" or "disagree", "reason": "one short sentence"}."""

_SYSTEM = "You are a careful, strict evaluator. You reply with JSON only."
_VERDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["agree", "disagree"]},
        "reason": {"type": "string"},
    },
    "required": ["verdict", "reason"],
    "additionalProperties": False,
}
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_BACKOFF_S, _MAX_BACKOFF_S, _MAX_RETRY_AFTER_S = 0.5, 8.0, 60.0


class JudgeError(ShadowError):
    """The judge could not be asked or gave no usable verdict."""


class Judge(SpecComparator):
    """Asks the model once per distinct (model, rubric, output, outcome).

    A call that fails after its retries, an answer without a verdict, or a
    cache that cannot be read or written gives :meth:`Judgement.defer` with the
    note ``judge failed: ...``: no verdict, so nothing is stored or cached and
    the next compare asks again (:func:`shadow.compare.step.compare` also stops
    asking for the rest of a run after several failures in a row, and logs
    them). A prediction or outcome that cannot be serialised to JSON for the
    prompt can never be judged: it disagrees with a note. An ``api_key_env``
    that is not set raises :class:`ConfigError` at the first call: a
    configuration mistake, not a per-item failure.

    Connection errors, timeouts, 408, 429 and 5xx are retried up to
    ``max_attempts`` in all, after a full-jitter backoff from 0.5 s up to 8 s,
    or as long as a ``Retry-After`` (seconds or an HTTP date) asks, up to 60 s
    (:func:`shadow.core.retry.delay`). ``sleep``, ``now`` and ``uniform`` are
    for tests.
    """

    def __init__(
        self,
        spec: JudgeSpec,
        *,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = utc_now,
        uniform: Callable[[float, float], float] | None = None,
    ) -> None:
        super().__init__(spec)
        self._spec = spec
        self._rubric = spec.rubric if spec.rubric is not None else DEFAULT_RUBRIC
        try:
            render(self._rubric, {"output": "", "outcome": ""})
        except TemplateError as exc:
            raise ConfigError(
                f"judge rubric: {exc}; only {{{{ output }}}} and {{{{ outcome }}}} are known"
            ) from exc
        self._url = spec.base_url.rstrip("/") + "/chat/completions"
        self._retry = RetryPolicy(max_attempts=spec.max_attempts, base_s=_BACKOFF_S,
                                  max_backoff_s=_MAX_BACKOFF_S,
                                  max_retry_after_s=_MAX_RETRY_AFTER_S)
        self._sleep, self._now, self._uniform = sleep, now, uniform or jitter()
        identity = orjson.dumps([spec.model, self._rubric, spec.prediction_path,
                                 spec.outcome_path])
        self.name = f"judge:{hashlib.sha256(identity).hexdigest()[:12]}"

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        try:
            key = self._key(output, outcome)
            cached = self._cached(key)
            if cached is not None:
                return cached
            judgement = self._ask(output, outcome)
            self._remember(key, judgement)
            return judgement
        except (JudgeError, sqlite3.Error) as exc:
            # A warning per item would flood the log during an outage: the runner
            # logs one per compare run with the count and the last error.
            log.debug("judge_failed", comparator=self.name, url=self._url, error=str(exc))
            return Judgement.defer(f"judge failed: {exc}")
        except TypeError as exc:  # orjson: a value that is not JSON, now or ever
            log.warning("judge_failed", comparator=self.name, url=self._url, error=str(exc))
            return Judgement(False, {}, f"judge failed: cannot show the values: {exc}")

    def _key(self, output: Any, outcome: Any) -> str:
        content = [self._spec.model, self._rubric, output, outcome]
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()

    # -- the call ------------------------------------------------------------

    def _ask(self, output: Any, outcome: Any) -> Judgement:
        body = {
            "model": self._spec.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": _SYSTEM},
                {"role": "user", "content": self._prompt(output, outcome)},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": _VERDICT_SCHEMA, "strict": True},
            },
        }
        return _verdict(self._post(body))

    def _prompt(self, output: Any, outcome: Any) -> str:
        context = {"output": _as_text(output), "outcome": _as_text(outcome)}
        prompt = render(self._rubric, context)
        # A rubric without the placeholders still gets to see both sides.
        for name in ("output", "outcome"):
            if not re.search(r"\{\{\s*" + name + r"\s*\}\}", self._rubric):
                prompt += f"\n\n{name.capitalize()}:\n{context[name]}"
        return str(prompt)

    def _post(self, body: Any) -> Any:
        headers = {}
        if self._spec.api_key_env is not None:
            key = expand("${" + self._spec.api_key_env + "}", "api_key_env")
            headers["authorization"] = f"Bearer {key}"
        try:
            return post_json(self._url, body, headers=headers, timeout_s=self._spec.timeout_s,
                             retry=self._retry, sleep=self._sleep, now=self._now,
                             uniform=self._uniform,
                             # Asking again will not help: the predictions stay pending
                             # until the configuration is fixed, so say where to look.
                             refused_hint="refused: check base_url, model and api_key_env")
        except PostError as exc:
            raise JudgeError(str(exc)) from exc

    # -- the cache -----------------------------------------------------------

    def _cached(self, key: str) -> Judgement | None:
        if not self._spec.cache:
            return None
        with self._connection() as db:
            row = db.execute("SELECT agree, reason FROM verdicts WHERE key = ?", (key,)).fetchone()
        return None if row is None else Judgement(bool(row[0]), {}, row[1])

    def _remember(self, key: str, judgement: Judgement) -> None:
        if not self._spec.cache:
            return
        with self._connection() as db, db:
            db.execute(
                "INSERT OR REPLACE INTO verdicts (key, agree, reason, model, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, judgement.agree, judgement.note, self._spec.model,
                 datetime.now(UTC).isoformat()),
            )

    @contextlib.contextmanager
    def _connection(self) -> Any:
        # One short connection per use: comparators have no close(), and a judge call
        # takes far longer than opening a SQLite file.
        path = Path(self._spec.cache_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0)
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, "
                "agree INTEGER NOT NULL, reason TEXT, model TEXT, created_at TEXT)"
            )
            yield db
        finally:
            db.close()


def _verdict(answer: Any) -> Judgement:
    """The verdict in a chat-completions response: strict JSON, or JSON inside text."""
    content = get_path(answer, "choices.0.message.content")
    if not isinstance(content, str):
        raise JudgeError("the response has no choices[0].message.content text")
    match = _OBJECT.search(content)
    try:
        reply = orjson.loads(match.group(0) if match else content)
    except orjson.JSONDecodeError as exc:
        raise JudgeError(f"the judge's reply is not JSON: {content[:200]!r}") from exc
    verdict = reply.get("verdict") if isinstance(reply, dict) else None
    verdict = verdict.strip().lower() if isinstance(verdict, str) else None
    if verdict not in ("agree", "disagree"):
        raise JudgeError(f"the judge's reply has no agree/disagree verdict: {content[:200]!r}")
    reason = reply.get("reason")
    return Judgement(verdict == "agree", {}, reason if isinstance(reason, str) else None)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
