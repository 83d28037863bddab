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

>>> from shadow.config.file import parse_config
>>> spec = parse_config({"comparator": {"kind": "similarity", "threshold": 0.5}}).comparator
>>> build_text_comparator(spec).compare("Your refund is on its way", "the refund is on the way")
Judgement(agree=True, fields={}, note='f1=0.667', deferred=False)
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import re
import unicodedata
from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shadow.compare.base import Comparator, Judgement, SpecComparator
from shadow.compare.judge import DEFAULT_RUBRIC, Judge
from shadow.config.comparators import JudgeSpec, SemanticSpec, SimilaritySpec
from shadow.core.errors import ConfigError

__all__ = [
    "DEFAULT_RUBRIC",
    "build_text_comparator",
    "f1_score",
    "rouge_l",
    "tokens",
]

TextSpec = SimilaritySpec | SemanticSpec | JudgeSpec


def build_text_comparator(spec: TextSpec) -> Comparator:
    """The comparator for a free-text spec.

    :func:`shadow.compare.comparators.build_comparator` calls it.

    Raises:
        ConfigError: the ``semantic`` extra is not installed, or a judge's rubric
            names a placeholder other than ``{{ output }}`` and ``{{ outcome }}``.
    """
    if isinstance(spec, SimilaritySpec):
        return _Similarity(spec)
    if isinstance(spec, SemanticSpec):
        return _Semantic(spec)
    return Judge(spec)


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


class _TextComparator(SpecComparator):
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
