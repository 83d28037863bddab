"""Comparators for free text: drafted replies, summaries.

* ``similarity``: a deterministic lexical score, token-level F1 or ROUGE-L.
* ``semantic``: cosine similarity of sentence embeddings from WordLlama, whose
  small model ships inside its wheel (``pip install 'shadow-rollout[semantic]'``);
  nothing is downloaded or written at run time.
* ``judge``: an LLM asked through an OpenAI-compatible chat API, with a rubric;
  verdicts are cached by content hash, so a re-run costs nothing.

All three take their text after the spec's ``prediction_path`` and
``outcome_path``. ``similarity`` and ``semantic`` need a string on both sides
(anything else disagrees with a note); ``judge`` accepts any JSON value. The
note of a judgement carries the score (``f1=0.667``, ``cosine=0.913``) or the
judge's reason, and is stored with the comparison. When the judge cannot be
asked or gives no usable answer, its judgement is deferred (no verdict, nothing
stored) and the prediction is judged again at the next compare. In the
configuration file::

    comparators:
      lexical: {kind: similarity, metric: rouge_l, threshold: 0.6, prediction_path: reply}
      meaning: {kind: semantic, threshold: 0.85, prediction_path: reply}
      judged:
        kind: judge
        base_url: https://api.openai.com/v1
        model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY
        prediction_path: reply
        rubric: "Would {{ output }} do instead of {{ outcome }}? Reply with JSON ..."
        cache_path: .shadow-judge-cache.sqlite   # relative to the working directory

>>> from shadow.config import parse_config
>>> spec = parse_config({"comparator": {"kind": "similarity", "threshold": 0.5}}).comparator
>>> build_text_comparator(spec).compare("Your refund is on its way", "the refund is on the way")
Judgement(agree=True, fields={}, note='f1=0.667', deferred=False)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import importlib
import importlib.metadata
import importlib.util
import re
import sqlite3
import time
import unicodedata
import urllib.error
import urllib.request
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

from shadow.candidates.remote import expand
from shadow.comparator_specs import JudgeSpec, SemanticSpec, SimilaritySpec
from shadow.comparators import Comparator, Judgement, _SpecComparator
from shadow.errors import ConfigError, ShadowError
from shadow.paths import get_path
from shadow.templates import TemplateError, render

__all__ = [
    "DEFAULT_RUBRIC",
    "build_text_comparator",
    "f1_score",
    "rouge_l",
    "tokens",
]

log = structlog.get_logger(__name__)

TextSpec = SimilaritySpec | SemanticSpec | JudgeSpec


def build_text_comparator(spec: TextSpec) -> Comparator:
    """The comparator for a free-text spec; :func:`shadow.comparators.build_comparator` calls it.

    Raises:
        ConfigError: the ``semantic`` extra is not installed, or a judge's rubric
            names a placeholder other than ``{{ output }}`` and ``{{ outcome }}``.
    """
    if isinstance(spec, SimilaritySpec):
        return _Similarity(spec)
    if isinstance(spec, SemanticSpec):
        return _Semantic(spec)
    return _Judge(spec)


# -- similarity --------------------------------------------------------------

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    """The words of ``text``: NFKC-normalised, case-folded, split on non-word characters.

    Unicode-aware (``\\w`` covers every script's letters and digits) and
    language-neutral: unlike SQuAD's scorer, articles are kept, since which
    words are articles depends on the language.

    >>> tokens("Don't panic, Zoë!")
    ['don', 't', 'panic', 'zoë']
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def f1_score(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """Token-level F1: the harmonic mean of precision and recall of the bag of words.

    Two empty texts score 1, one empty text 0.
    """
    if not prediction or not reference:
        return float(not prediction and not reference)
    overlap = sum((Counter(prediction) & Counter(reference)).values())
    return _f_measure(overlap, len(prediction), len(reference))


def rouge_l(prediction: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure (Lin, 2004) with beta 1: precision and recall of the longest
    common subsequence of tokens. Two empty texts score 1, one empty text 0.

    Time is proportional to the product of the lengths, memory to the shorter one.
    """
    if not prediction or not reference:
        return float(not prediction and not reference)
    return _f_measure(_lcs_length(prediction, reference), len(prediction), len(reference))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(b) > len(a):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _f_measure(matched: int, predicted: int, expected: int) -> float:
    if matched == 0:
        return 0.0
    precision, recall = matched / predicted, matched / expected
    return 2 * precision * recall / (precision + recall)


_METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], float]] = {
    "f1": f1_score,
    "rouge_l": rouge_l,
}


class _TextComparator(_SpecComparator):
    """Needs a string on each side."""

    def _judge(self, output: Any, outcome: Any) -> Judgement:
        for side, value in (("prediction", output), ("outcome", outcome)):
            if not isinstance(value, str):
                return Judgement(False, {}, f"{side} is not text: {type(value).__name__}")
        return self._judge_text(output, outcome)

    @abstractmethod
    def _judge_text(self, output: str, outcome: str) -> Judgement:
        """Judge two texts."""


class _Similarity(_TextComparator):
    def __init__(self, spec: SimilaritySpec) -> None:
        super().__init__(spec)
        self._metric, self._score = spec.metric, _METRICS[spec.metric]
        self._threshold = spec.threshold

    def _judge_text(self, output: str, outcome: str) -> Judgement:
        score = self._score(tokens(output), tokens(outcome))
        return Judgement(score >= self._threshold, {}, f"{self._metric}={score:.3f}")


# -- semantic ----------------------------------------------------------------

_EXTRA_MISSING = (
    "the semantic comparator needs the WordLlama model: pip install 'shadow-rollout[semantic]'"
)


class _Semantic(_TextComparator):
    """The model is loaded at the first comparison and shared by every comparator."""

    def __init__(self, spec: SemanticSpec) -> None:
        super().__init__(spec)
        if importlib.util.find_spec("wordllama") is None:
            raise ConfigError(_EXTRA_MISSING)
        self._threshold = spec.threshold
        # Another release may ship another model: its scores are other comparisons.
        identity = f"{spec.model_dump_json()} wordllama {importlib.metadata.version('wordllama')}"
        self.name = f"semantic:{hashlib.sha256(identity.encode()).hexdigest()[:12]}"

    def _judge_text(self, output: str, outcome: str) -> Judgement:
        if not output.strip() or not outcome.strip():
            same = not output.strip() and not outcome.strip()
            return Judgement(same, {}, f"cosine={float(same):.3f}")
        first, second = _wordllama().embed([output, outcome]).tolist()
        score = _cosine(first, second)
        return Judgement(score >= self._threshold, {}, f"cosine={score:.3f}")


@functools.cache
def _wordllama() -> Any:
    """WordLlama's default model, read from the files inside the installed package.

    Raises:
        ConfigError: the package or its files are missing. A model that cannot load
            is a broken installation, not a per-item failure: stopping beats storing
            a disagreement for every comparison.
    """
    try:
        module = importlib.import_module("wordllama")
        # Pointing the cache at the package itself: 0.4 looks for its bundled tokenizer
        # in a directory named differently from the one it ships, then downloads it.
        package = Path(module.__file__ or "").parent
        return module.WordLlama.load(cache_dir=package, disable_download=True)
    except ImportError as exc:
        raise ConfigError(_EXTRA_MISSING) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the WordLlama model could not be loaded: {exc}") from exc


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    norms = sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


# -- judge -------------------------------------------------------------------

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


class JudgeError(ShadowError):
    """The judge could not be asked or gave no usable verdict."""


class _Judge(_SpecComparator):
    """Asks the model once per distinct (model, rubric, output, outcome).

    A call that fails after its retries, an answer without a verdict, or a
    cache that cannot be read or written gives :meth:`Judgement.defer` with the
    note ``judge failed: ...``: no verdict, so nothing is stored or cached and
    the next compare asks again (:func:`shadow.runner.compare` also stops
    asking for the rest of a run after several failures in a row, and logs
    them). A prediction or outcome that cannot be serialised to JSON for the
    prompt can never be judged: it disagrees with a note. An ``api_key_env``
    that is not set raises :class:`ConfigError` at the first call: a
    configuration mistake, not a per-item failure.
    """

    def __init__(self, spec: JudgeSpec, *, sleep: Callable[[float], None] = time.sleep) -> None:
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
        self._sleep = sleep
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
        return _verdict(self._post(orjson.dumps(body)))

    def _prompt(self, output: Any, outcome: Any) -> str:
        context = {"output": _as_text(output), "outcome": _as_text(outcome)}
        prompt = render(self._rubric, context)
        # A rubric without the placeholders still gets to see both sides.
        for name in ("output", "outcome"):
            if not re.search(r"\{\{\s*" + name + r"\s*\}\}", self._rubric):
                prompt += f"\n\n{name.capitalize()}:\n{context[name]}"
        return str(prompt)

    def _post(self, body: bytes) -> Any:
        headers = {"content-type": "application/json"}
        if self._spec.api_key_env is not None:
            key = expand("${" + self._spec.api_key_env + "}", "api_key_env")
            headers["authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        # No proxies from the environment, like the chat candidate's client.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        attempt = 1
        while True:
            try:
                with opener.open(request, timeout=self._spec.timeout_s) as response:
                    return orjson.loads(response.read())
            except orjson.JSONDecodeError as exc:
                raise JudgeError(f"the response is not JSON: {exc}") from exc
            except urllib.error.HTTPError as exc:
                exc.close()
                retryable = exc.code in (408, 429) or exc.code >= 500
                problem = f"{self._url} answered {exc.code}"
                if not retryable:
                    # Asking again will not help: the predictions stay pending until
                    # the configuration is fixed, so say where to look.
                    problem += " (refused: check base_url, model and api_key_env)"
                wait = _retry_after(exc.headers.get("retry-after"))
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                retryable, problem, wait = True, f"{type(exc).__name__}: {exc}", None
            if not retryable or attempt >= self._spec.max_attempts:
                raise JudgeError(f"{problem} (after {attempt} attempt(s))")
            self._sleep(wait if wait is not None else min(8.0, 0.5 * 2 ** (attempt - 1)))
            attempt += 1

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


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value else None
    except ValueError:
        return None
