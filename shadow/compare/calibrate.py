"""Calibration: how far does a comparator agree with people?

Each line of the verdicts file is ``{"output": …, "outcome": …, "human":
"same"|"different"}``: a prediction, the human outcome, and a person's verdict on
whether they mean the same. The configured comparator judges every pair, and the
report gives its accuracy against the people, Cohen's kappa (agreement beyond
chance) and the confusion counts. Teams should require at least 85 % agreement
before relying on a comparator (or an LLM judge).

``shadow calibrate`` (``shadow/cli/calibrate.py``) runs it on a file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shadow.core.errors import ConfigError
from shadow.core.fixed_sample import wilson

DEFAULT_MIN_AGREEMENT = 0.85
HUMAN_VERDICTS = {"same": True, "different": False}


@dataclass(frozen=True)
class Verdict:
    output: Any
    outcome: Any
    same: bool
    """The person's verdict."""


@dataclass(frozen=True)
class Calibration:
    """The comparator against the people; ``kappa`` is ``None`` when undefined (pe = 1)."""

    comparator: str
    n: int
    both_same: int
    both_different: int
    comparator_same_human_different: int
    comparator_different_human_same: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    kappa: float | None
    min_agreement: float

    @property
    def reaches(self) -> bool:
        return self.accuracy >= self.min_agreement

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "reaches_min_agreement": self.reaches}


def read_verdicts(path: Path) -> list[Verdict]:
    """Raises ConfigError for an unreadable file or a line that is not a verdict."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    verdicts = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            verdicts.append(_verdict(line, f"{path}:{number}"))
    if not verdicts:
        raise ConfigError(f"{path}: no verdicts")
    return verdicts


def _verdict(line: str, where: str) -> Verdict:
    try:
        raw = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a JSON line ({exc})") from exc
    if not isinstance(raw, dict) or "output" not in raw or "outcome" not in raw:
        raise ConfigError(f"{where}: expected an object with 'output', 'outcome' and 'human'")
    human = raw.get("human")
    if human not in HUMAN_VERDICTS:
        raise ConfigError(f"{where}: 'human' must be \"same\" or \"different\", got {human!r}")
    return Verdict(raw["output"], raw["outcome"], HUMAN_VERDICTS[human])


def calibrate(verdicts: Sequence[Verdict], judge: Callable[[Any, Any], bool], *,
              comparator: str = "", min_agreement: float = DEFAULT_MIN_AGREEMENT) -> Calibration:
    """Judge every pair and measure the judge against the people."""
    counts = {(True, True): 0, (False, False): 0, (True, False): 0, (False, True): 0}
    for verdict in verdicts:
        counts[(bool(judge(verdict.output, verdict.outcome)), verdict.same)] += 1
    return measure(counts[(True, True)], counts[(False, False)], counts[(True, False)],
                   counts[(False, True)], comparator=comparator, min_agreement=min_agreement)


def measure(both_same: int, both_different: int, same_different: int, different_same: int,
            *, comparator: str = "",
            min_agreement: float = DEFAULT_MIN_AGREEMENT) -> Calibration:
    """Accuracy and Cohen's kappa from the 2x2 counts (comparator verdict first)."""
    n = both_same + both_different + same_different + different_same
    if n == 0:
        raise ConfigError("no verdicts to calibrate against")
    po = (both_same + both_different) / n
    comparator_same, human_same = both_same + same_different, both_same + different_same
    pe = (comparator_same * human_same + (n - comparator_same) * (n - human_same)) / (n * n)
    kappa = None if pe >= 1.0 else (po - pe) / (1.0 - pe)
    interval = wilson(both_same + both_different, n)
    assert interval.low is not None and interval.high is not None
    return Calibration(comparator, n, both_same, both_different, same_different, different_same,
                       po, interval.low, interval.high, kappa, min_agreement)


def describe_calibration(result: Calibration) -> str:
    kappa = "undefined (one side always says the same)" if result.kappa is None \
        else f"{result.kappa:.3f}"
    bar = f"{100 * result.min_agreement:.0f} %"
    verdict = (f"reaches the {bar} agreement to require before relying on it" if result.reaches
               else f"below the {bar} agreement to require before relying on it: do not rely "
               "on it yet")
    return "\n".join([
        f"comparator {result.comparator} against {result.n} human verdicts",
        f"  accuracy      {100 * result.accuracy:.1f} %  (95 % CI "
        f"{100 * result.accuracy_low:.1f}–{100 * result.accuracy_high:.1f} %)",
        f"  Cohen's kappa {kappa}",
        "                         human same   human different",
        f"  comparator same       {result.both_same:>10}   "
        f"{result.comparator_same_human_different:>15}",
        f"  comparator different  {result.comparator_different_human_same:>10}   "
        f"{result.both_different:>15}",
        verdict,
    ]) + "\n"
