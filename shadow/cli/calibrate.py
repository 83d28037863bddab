"""``shadow calibrate``: a comparator against a file of human verdicts.

Exit codes: 0 (also when below the bar, unless ``--strict``), 2 usage or
configuration error, 3 with ``--strict`` when accuracy is below ``--min-agreement``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shadow.cli.options import input_file
from shadow.core.errors import ConfigError, ShadowError

EXIT_OK, EXIT_BELOW = 0, 3
# shadow.compare.calibrate.DEFAULT_MIN_AGREEMENT, restated so that parsing imports nothing
# of the comparators (tests/cli/test_startup.py checks they agree).
DEFAULT_MIN_AGREEMENT = 0.85


def add_calibrate_parser(commands: Any,
                         add_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``calibrate`` on the ``shadow`` subparsers; ``add_config`` adds ``--config``."""
    parser = commands.add_parser(
        "calibrate", help="measure a comparator's agreement with human verdicts",
        description="Run the configured comparator on each (output, outcome) pair of a file "
        "of human verdicts and report its accuracy, Cohen's kappa and confusion counts. Each "
        "line: {\"output\": ..., \"outcome\": ..., \"human\": \"same\"|\"different\"}.")
    parser.add_argument("verdicts", type=Path, metavar="VERDICTS.jsonl")
    add_config(parser)
    parser.add_argument("--compare", metavar="NAME",
                        help="comparator kind or name under 'comparators' in the config")
    parser.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                        metavar="RATE", help="the accuracy to require (default 0.85)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 3 when accuracy is below --min-agreement")
    parser.add_argument("--format", choices=["table", "json"], default="table")
    parser.set_defaults(handler=calibrate_command)


def calibrate_command(args: argparse.Namespace) -> int:
    """The ``calibrate`` handler: returns the exit code."""
    from shadow.compare.calibrate import calibrate, describe_calibration, read_verdicts
    from shadow.compare.comparators import build_comparator
    from shadow.config.file import load_config

    if not 0.0 <= args.min_agreement <= 1.0:
        raise ConfigError(f"--min-agreement: expected a rate between 0 and 1, "
                          f"got {args.min_agreement}")
    comparator = build_comparator(load_config(args.config).comparator_named(args.compare))

    def judge(output: Any, outcome: Any) -> bool:
        judgement = comparator.compare(output, outcome)
        if judgement.deferred:
            # A calibration over the verdicts the judge happened to answer would mislead.
            raise ShadowError(f"the comparator gave no verdict: {judgement.note}")
        return judgement.agree

    result = calibrate(read_verdicts(input_file(args.verdicts)), judge,
                       comparator=args.compare or comparator.name,
                       min_agreement=args.min_agreement)
    if args.format == "json":
        sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n")
    else:
        sys.stdout.write(describe_calibration(result))
    return EXIT_BELOW if args.strict and not result.reaches else EXIT_OK
