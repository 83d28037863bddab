"""``shadow eval`` on the command line: its options, the summary and the JUnit XML.

What it runs and measures is :mod:`shadow.reports.golden_set`; the exit codes are listed there.
Parsing imports nothing of it: :func:`eval_command` and the functions it calls import it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadow.cli.options import input_file
from shadow.core.errors import ShadowError

if TYPE_CHECKING:
    from shadow.reports.golden_set import EvalResult, FieldRate, Rate, SegmentRate


def _line(label: str, agreement: Rate | SegmentRate | FieldRate) -> str:
    from shadow.reports.golden_set import percent

    rate, low, high = agreement.rate, agreement.low, agreement.high
    interval = ("" if rate is None or low is None or high is None
                else f", 95 % CI {100 * low:.1f}–{100 * high:.1f} %")
    return (f"  {label:<28} {percent(rate):>8}  "
            f"({agreement.agreed}/{agreement.compared}{interval})")


def describe_eval(result: EvalResult) -> str:
    """The summary a person reads in the CI log."""
    from shadow.reports.golden_set import EXIT_GATE, percent

    version = f" {result.version}" if result.version else ""
    lines = [f"shadow eval: {result.candidate}{version} on {len(result.cases)} golden cases",
             _line("overall", result.agreement) + f"   errors {result.errors}"]
    others = {v: sum(c.verdict == v for c in result.cases) for v in ("abstain", "no_outcome")}
    if any(others.values()):
        lines.append(f"  not compared: {others['abstain']} abstained, "
                     f"{others['no_outcome']} without outcome")
    if result.segments:
        lines.append("by segment")
        lines += [_line(f"{s.field}={s.value}", s) for s in result.segments]
    if result.fields:
        lines.append("by field")
        lines += [_line(f.field, f) for f in result.fields]
    if result.baseline_rate is not None or result.changed:
        lines.append(f"cases that changed verdict against the baseline "
                     f"({percent(result.baseline_rate)}): {len(result.changed)}")
        lines += [f"  {event_id}  {old} → {new}" for event_id, old, new in result.changed]
    for gate in result.gates:
        lines.append(f"gate {gate.name}: {gate.message}  {'pass' if gate.passed else 'FAIL'}")
    lines.append("result: " + ("pass" if result.passed else f"FAIL (exit {EXIT_GATE})"))
    return "\n".join(lines) + "\n"


def junit_xml(result: EvalResult) -> bytes:
    """One ``shadow eval`` testsuite: a testcase per golden case, then one per gate."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", name="shadow eval")
    classname = f"shadow eval.{result.candidate}"
    failures = errors = skipped = 0
    for case in result.cases:
        element = ET.SubElement(suite, "testcase", name=case.event_id, classname=classname)
        shown = f"expected {_json(case.expected)}, got {_json(case.got)}"
        if case.verdict == "disagree":
            failures += 1
            ET.SubElement(element, "failure", message=shown, type="disagree").text = shown
        elif case.verdict == "error":
            errors += 1
            message = f"{case.error}; expected {_json(case.expected)}"
            ET.SubElement(element, "error", message=message, type="candidate_error").text = message
        elif case.verdict in ("abstain", "no_outcome"):
            skipped += 1
            ET.SubElement(element, "skipped", message=case.verdict)
    for gate in result.gates:
        element = ET.SubElement(suite, "testcase", name=gate.name, classname="shadow eval.gates")
        if not gate.passed:
            failures += 1
            ET.SubElement(element, "failure", message=gate.message, type="gate").text = gate.message
    suite.set("tests", str(len(result.cases) + len(result.gates)))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# -- command line ---------------------------------------------------------------


def add_eval_parser(commands: Any, add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``eval`` on the ``shadow`` subparsers; ``add_config`` adds ``--config``."""
    parser = commands.add_parser(
        "eval", help="golden-set regression gate for CI (exit 3 when a gate fails)",
        description="Run a candidate over a labelled golden set, report agreement overall, "
        "per segment and per field, list the cases that changed verdict against a baseline, "
        "and exit 3 when agreement is below the floor or dropped too far. A golden set is "
        "event files plus --outcomes, or one JSONL file of events each with an 'expected' "
        "outcome. Exit codes: 0 pass, 1 runtime failure, 2 usage error, 3 gate failed.")
    parser.add_argument("golden", nargs="+", type=Path, metavar="GOLDEN",
                        help="golden events (.jsonl, .csv, .parquet), or JSONL events "
                        "with an 'expected' field when --outcomes is not given")
    parser.add_argument("--outcomes", nargs="+", type=Path, default=[], metavar="OUTCOMES",
                        help="the expected outcomes, in the canonical outcome format")
    parser.add_argument("--candidate", metavar="MODULE:FUNC|URL",
                        help="the candidate (default: 'candidate' in the config)")
    add_config(parser)
    parser.add_argument("--compare", metavar="NAME",
                        help="comparator kind or name under 'comparators' in the config")
    parser.add_argument("--baseline", type=Path, metavar="REPORT.json",
                        help="the --out JSON of an earlier run, to list changed verdicts")
    parser.add_argument("--fail-below", type=float, metavar="RATE",
                        help="exit 3 when agreement is below this rate (0..1)")
    parser.add_argument("--max-drop", type=float, metavar="POINTS",
                        help="exit 3 when agreement fell more than this many percentage points "
                        "below the baseline's")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write a JUnit XML report")
    parser.add_argument("--out", type=Path, metavar="REPORT.json",
                        help="write the result as JSON (the --baseline format)")
    parser.set_defaults(handler=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    """The ``eval`` handler: returns the exit code."""
    from shadow.reports.golden_set import EXIT_GATE, EXIT_OK, EvalRequest, run_eval

    for path in [*args.golden, *args.outcomes]:
        input_file(path)
    result = run_eval(EvalRequest(
        golden=args.golden, outcomes=args.outcomes, candidate=args.candidate,
        config=args.config, compare=args.compare, baseline=args.baseline,
        fail_below=args.fail_below, max_drop=args.max_drop,
    ))
    sys.stdout.write(describe_eval(result))
    if args.junit is not None:
        _write(args.junit, junit_xml(result))
    if args.out is not None:
        _write(args.out, (json.dumps(result.as_json(), indent=2) + "\n").encode())
    return EXIT_OK if result.passed else EXIT_GATE


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ShadowError(f"cannot write {path}: {exc.strerror}") from exc
