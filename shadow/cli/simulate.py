"""``shadow rollout simulate``: its options, and the tables it prints.

Without ``--scenario`` it simulates the classic scenario (independent,
instantly labelled comparisons; every option below ``--format`` applies);
with ``--scenario NAME`` or ``all``, the named scenarios of
:mod:`rollout.simulate_scenarios` at their documented settings (only
``--runs``, ``--seed`` and ``--format`` apply).

Parsing imports nothing of the simulator: the options below restate
``rollout.simulate.Scenario``'s fields and defaults, the methods of
``shadow.config.rollout.Method`` and the names of ``rollout.simulate_scenarios.SCENARIOS``
(tests/cli/test_startup.py checks they agree), and :func:`run_command` imports the rest.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rollout.simulate import SimulationResult
    from rollout.simulate_figures import Figure, Measure, ScenarioResult

EXIT_OK, EXIT_USAGE = 0, 2

METHODS = ("one_sided", "beta_binomial", "normal_mixture")
SCENARIO_NAMES = ("events-per-key", "events-per-key-10", "late-disagreements", "small-segment",
                  "good", "live-echo", "candidate-change")

# Each field of Scenario: its default and help, in Scenario's order.
OPTIONS: dict[str, tuple[int | float | str, str]] = {
    "threshold": (0.90, "promotion threshold on agreement"),
    "alpha": (0.05, "error of the confidence sequence, per rollout step"),
    "method": ("one_sided", "confidence sequence of the gate"),
    "tuning": (500, "normal mixture: the sample size where its bound is tightest"),
    "check_every": (100, "compared events between gate checks"),
    "max_events": (20_000, "a run that has not promoted after this many compared events "
                           "did not"),
    "at_threshold": (0.90, "true agreement of the not-good-enough candidate (false promotion)"),
    "good": (0.95, "true agreement of the good candidate (time to promotion, false rollback)"),
    "healthy": (0.95, "CUSUM design: healthy agreement"),
    "degraded": (0.80, "CUSUM design: degraded agreement it must catch"),
    "false_alarm": (0.01, "CUSUM design: false-alarm budget over --horizon"),
    "horizon": (100_000, "CUSUM design: compared events the false-alarm budget covers"),
    "drop_to": (0.80, "true agreement after the drop"),
    "before_drop": (1_000, "compared events at --good the CUSUM sees before the drop"),
    "naive_z": (1.6448536269514722, "z of the naive gate's one-sided Wilson lower bound"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``shadow rollout simulate`` to ``parser``."""
    parser.add_argument("--runs", type=int, default=1000, metavar="N",
                        help="simulated rollouts of each kind (default 1000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; the same seed gives the same figures (default 0)")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.add_argument("--scenario", metavar="NAME", default=None,
                        help="a named real-traffic scenario at its documented settings, or "
                             f"all: {', '.join(SCENARIO_NAMES)} (default: the classic "
                             "scenario the options below describe)")
    for name, (default, text) in OPTIONS.items():
        option = "--" + name.replace("_", "-")
        if name == "method":
            parser.add_argument(option, choices=METHODS, default=default,
                                help=f"{text} (default {default})")
        else:
            parser.add_argument(option, type=type(default), default=default,
                                metavar="N" if isinstance(default, int) else "X",
                                help=f"{text} (default {default})")


def run_command(args: argparse.Namespace) -> tuple[int, str]:
    """Run the simulation the parsed options ask for.

    Returns the exit code and the text to print: the table or JSON on
    success (0); on a bad value (2), a one-line message naming the option,
    meant for stderr.
    """
    from dataclasses import fields

    from rollout.simulate import ParameterError, Scenario, simulate
    from shadow.config.rollout import Method

    if args.scenario is not None:
        return _run_named(args)
    try:
        values = {field.name: getattr(args, field.name) for field in fields(Scenario)}
        values["method"] = Method(values["method"])
        result = simulate(Scenario(**values), runs=args.runs, seed=args.seed)
    except ParameterError as exc:
        return EXIT_USAGE, f"--{exc.name.replace('_', '-')} {exc.problem}"
    if args.format == "json":
        return EXIT_OK, json.dumps(result.as_dict(), indent=2)
    return EXIT_OK, format_table(result)


def format_table(result: SimulationResult) -> str:
    """Both gates side by side, the rollback detector, and the targets."""
    from rollout.simulate import (
        TARGET_EVENTS_TO_PROMOTION,
        TARGET_EVENTS_TO_ROLLBACK,
        TARGET_FALSE_PROMOTION,
        TARGET_FALSE_ROLLBACK,
    )

    s, c = result.scenario, result.cusum
    gate, naive, rb = result.gate, result.naive, result.rollback
    rows = [
        ("promotion", "gate", "naive Wilson", "target", "met"),
        (f"false promotion (true agreement {s.at_threshold:g})",
         _rate(gate.false_promotions, result.runs), _rate(naive.false_promotions, result.runs),
         f"<= {TARGET_FALSE_PROMOTION:.0%}",
         _met(result.false_promotion_rate <= TARGET_FALSE_PROMOTION)),
        (f"median events to promotion (at {s.good:g})",
         _events(gate.median_events), _events(naive.median_events),
         f"<= {TARGET_EVENTS_TO_PROMOTION}",
         _met(gate.median_events <= TARGET_EVENTS_TO_PROMOTION)),
        (f"promoted within {s.max_events:,} events (at {s.good:g})",
         _rate(gate.promotions, result.runs), _rate(naive.promotions, result.runs), "", ""),
        None,
        ("rollback", "simulated", "predicted", "target", "met"),
        (f"false rollback within {s.horizon:,} events (at {s.good:g})",
         _rate(rb.false_rollbacks, result.runs), f"{result.predicted_false_rollback_rate:.2%}",
         f"<= {TARGET_FALSE_ROLLBACK:.0%}",
         _met(result.false_rollback_rate <= TARGET_FALSE_ROLLBACK)),
        (f"median events to rollback (after drop to {s.drop_to:g})",
         _events(rb.median_events), "", f"<= {TARGET_EVENTS_TO_ROLLBACK}",
         _met(rb.median_events <= TARGET_EVENTS_TO_ROLLBACK)),
        (f"alarm before the drop ({s.before_drop:,} events at {s.good:g})",
         _rate(rb.alarms_before_drop, result.runs), "", "", ""),
    ]
    header = [
        f"Simulated rollouts: {result.runs:,} runs of each kind, seed {result.seed}",
        f"gate: {s.method.value.replace('_', '-')} confidence sequence, alpha {s.alpha:g}, "
        f"threshold {s.threshold:g}, checked every {s.check_every:,} compared events, "
        f"at most {s.max_events:,}",
        f"naive: one-sided Wilson lower bound (z {s.naive_z:.3f}) checked after every batch",
        f"rollback: CUSUM up {c.up}, threshold {c.threshold} (healthy {s.healthy:g}, degraded "
        f"{s.degraded:g}, false alarm {s.false_alarm:g} over {s.horizon:,} compared events)",
        "rates: share of runs, with their 95 % Wilson interval",
        "",
    ]
    return "\n".join(header + _align(rows))


def _align(rows: list[tuple[str, str, str, str, str] | None]) -> list[str]:
    present = [row for row in rows if row is not None]
    widths = [max(len(row[i]) for row in present) for i in range(5)]
    lines = []
    for row in rows:
        if row is None:
            lines.append("")
            continue
        cells = [row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:],
                                                                        strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def _rate(count: int, runs: int) -> str:
    from shadow.core.fixed_sample import wilson

    interval = wilson(count, runs)
    return f"{count / runs:.1%} ({interval.low:.1%}-{interval.high:.1%})"


def _events(median: float) -> str:
    return f"{median:,.0f}" if math.isfinite(median) else "never"


def _met(holds: bool) -> str:
    return "yes" if holds else "NO"


# -- named scenarios ----------------------------------------------------------------------


def _run_named(args: argparse.Namespace) -> tuple[int, str]:
    from rollout.simulate import ParameterError
    from rollout.simulate_scenarios import run_scenarios

    try:
        results = run_scenarios(args.scenario, runs=args.runs, seed=args.seed)
    except ParameterError as exc:
        return EXIT_USAGE, f"--{exc.name.replace('_', '-')} {exc.problem}"
    if args.format == "json":
        return EXIT_OK, json.dumps({"runs": args.runs, "seed": args.seed,
                                    "scenarios": [r.as_dict() for r in results]}, indent=2)
    return EXIT_OK, "\n\n".join(format_scenario(r) for r in results)


def format_scenario(result: ScenarioResult) -> str:
    """One named scenario: its setting, then gate beside naive against the target."""
    rows: list[tuple[str, str, str, str, str] | None] = [
        ("", "gate", "naive", "target", "met")]
    notes = []
    for figure in result.figures:
        rows.append((figure.what, _measure(figure.gate),
                     _measure(figure.naive) if figure.naive is not None else "",
                     _target(figure), "" if figure.met is None else _met(figure.met)))
        if figure.naive_is:
            notes.append(f"naive in '{figure.what}': {figure.naive_is}")
    header = [
        f"Scenario {result.name}: {result.runs:,} runs, seed {result.seed}",
        f"setting: {result.setting}",
        f"naive: {result.naive}",
        *notes,
        "",
    ]
    return "\n".join(header + _align(rows))


def _measure(measure: Measure) -> str:
    from rollout.simulate_figures import Exact, Median, Rate

    if isinstance(measure, Rate):
        return _rate(measure.count, measure.runs)
    if isinstance(measure, Median):
        return _events(measure.value)
    assert isinstance(measure, Exact)
    return f"{measure.value:.3%} (exact)"


def _target(figure: Figure) -> str:
    from rollout.simulate_figures import Median

    if figure.target is None:
        return ""
    if isinstance(figure.gate, Median):
        return f"<= {figure.target:g}"
    return f"<= {figure.target:.0%}"
