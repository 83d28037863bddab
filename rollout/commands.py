"""``shadow rollout …``: status, history and a person's commands, on the store file.

Every command reads the plan from the configuration and the state from the
store; changes are audited under the person's name (``--actor``, or the
environment variable ``SHADOW_ACTOR``, or the login name).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from rollout import audit
from rollout.controller import Assessment, Controller
from rollout.gates import Phase
from rollout.runtime import rolled_out
from rollout.state import Action, Refused, RolloutState, Transition
from shadow.errors import ConfigError

_MARK = {Phase.PASS: "✓", Phase.FAIL: "✗", Phase.INCONCLUSIVE: "…"}


def add_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``rollout`` and its subcommands; ``common`` adds --db and --config."""
    rollout = commands.add_parser(
        "rollout", help="staged rollout: status, promote, pause, resume, rollback, history",
        description="Look at and steer the staged rollout configured under 'rollout'.")
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    status = sub.add_parser("status", help="step, status, gate evidence and warnings")
    common(status)
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.set_defaults(handler=_status)

    history = sub.add_parser("history", help="every transition, with actor, reason, evidence")
    common(history)
    history.add_argument("--limit", type=int, metavar="N", help="only the last N")
    history.add_argument("--format", choices=["table", "json"], default="table")
    history.set_defaults(handler=_history)

    for action, text, reason_required in (
        (Action.PROMOTE, "promote one step (or --full to the last)", False),
        (Action.PAUSE, "stop promotion; traffic and rollback stay as they are", False),
        (Action.RESUME, "let a paused rollout progress again", False),
        (Action.ROLLBACK, "take everything back to shadow mode now", True),
        (Action.RESTART, "start again from shadow after a rollback or abort", False),
        (Action.ABORT, "give up: shadow only until restarted", True),
    ):
        parser = sub.add_parser(action.value, help=text)
        common(parser)
        parser.add_argument("--reason", required=reason_required, metavar="TEXT",
                            help="why, for the audit trail" + (" (required)"
                                                               if reason_required else ""))
        parser.add_argument("--actor", default=os.environ.get("SHADOW_ACTOR"), metavar="NAME",
                            help="who gives the command (env SHADOW_ACTOR; default: login name)")
        if action is Action.PROMOTE:
            parser.add_argument("--full", action="store_true", help="to the last step at once")
            parser.add_argument("--yes", action="store_true", help="confirm --full without asking")
            parser.add_argument("--force", action="store_true",
                                help="promote although the gates have not passed (audited)")
        parser.set_defaults(handler=_command, action=action)

    simulate = sub.add_parser(
        "simulate", help="false-promotion and rollback rates of the gates, by simulation")
    from rollout import simulate as simulation

    simulation.add_arguments(simulate)
    simulate.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from rollout import simulate as simulation

    code, text = simulation.run_command(args)
    if code == 2:
        raise ConfigError(text)
    print(text)
    return code


class _Opened:
    """The store, plan and controller one command works on."""

    def __init__(self, args: argparse.Namespace, *, read_only: bool) -> None:
        from shadow.candidates import build_candidate
        from shadow.comparators import build_comparator
        from shadow.config import load_config
        from shadow.store import Store

        config = load_config(args.config)
        if config.rollout is None:
            raise ConfigError("rollout: this configuration has no 'rollout' section"
                              + ("" if args.config else " (give --config FILE)"))
        db = args.db or (Path(config.store.path) if config.store.path else None)
        if db is None:
            raise ConfigError("--db is required (or set SHADOW_DB, or store.path in the config)")
        self.plan = config.rollout
        candidates = [build_candidate(spec) for spec in config.all_candidates()]
        if not candidates:
            raise ConfigError("candidate: the rollout needs the candidate it rolls out")
        candidate = rolled_out(self.plan, candidates)
        self.stack = ExitStack()
        self.store = self.stack.enter_context(Store(db, read_only=read_only))
        self.controller = Controller(
            self.store, self.plan, rollout=self.plan.name or candidate.name,
            candidate=candidate.name, version=candidate.version,
            comparator=build_comparator(config.comparator).name)

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()


def _status(args: argparse.Namespace) -> int:
    with _Opened(args, read_only=True) as opened:
        state = opened.controller.attach()
        if state is None:
            name = opened.controller.rollout
            print(f"rollout {name!r} has not started: a replay or the daemon with this "
                  f"configuration starts it")
            return 0
        assessment = opened.controller.assess()
        last = audit.latest_evaluations(opened.store, state.rollout)
        recent = audit.history(opened.store, state.rollout, limit=1)
    view = status_view(opened.controller, assessment, last,
                       recent[0].as_dict() if recent else None)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_status_text(view))
    return 0


def status_view(controller: Controller, a: Assessment, stored: dict[str, Any],
                last_transition: dict[str, Any] | None) -> dict[str, Any]:
    """What ``status`` shows, as data (the control API serves the same)."""
    s, plan = a.state, controller.plan
    return {
        "rollout": s.rollout, "candidate": s.candidate, "version": s.version,
        "step": s.step, "steps": len(plan.steps), "percent": s.percent,
        "status": s.status.value, "live": s.live,
        "live_share": controller.router().live_share, "holdout": plan.holdout,
        "review": plan.review, "step_started_at": s.step_started_at.isoformat(),
        "promotion": a.promotion.as_dict() if a.promotion else None,
        "rollback": a.rollback.as_dict() if a.rollback else None,
        "stored_evaluations": stored, "last_transition": last_transition,
        "warnings": list(a.warnings),
    }


def _status_text(view: dict[str, Any]) -> str:
    lines = [
        f"rollout {view['rollout']}: {view['candidate']} {view['version'] or ''}".rstrip(),
        f"  step {view['step']} of {view['steps'] - 1} · {view['percent']:g} % · "
        f"{view['status']} since {view['step_started_at']}",
        f"  live share of all traffic {view['live_share']:.2%} (holdout {view['holdout']:.0%},"
        f" review {view['review']:.0%})",
    ]
    for kind in ("promotion", "rollback"):
        evaluation = view[kind]
        if evaluation is None:
            continue
        lines.append(f"{kind} gates: {evaluation['phase']}")
        for check in evaluation["checks"]:
            lines.append(f"  {_MARK[Phase(check['phase'])]} {check['name']:<24} {check['detail']}")
    if view["last_transition"]:
        t = view["last_transition"]
        lines.append(f"last change: {t['action']} by {t['actor']} at {t['at']}: {t['reason']}")
    for warning in view["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _history(args: argparse.Namespace) -> int:
    with _Opened(args, read_only=True) as opened:
        records = audit.history(opened.store, opened.controller.rollout, limit=args.limit)
    if args.format == "json":
        sys.stdout.write(orjson.dumps([r.as_dict() for r in records],
                                      option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not records:
        print("no transitions yet")
    for r in records:
        came = f"{r.from_status.value}@{r.from_step}" if r.from_status else "-"
        print(f"{r.at.isoformat()}  {r.action.value:<15} {came:>20} → "
              f"{r.to_status.value}@{r.to_step} ({r.percent:g} %)  by {r.actor}: {r.reason}")
    return 0


def _command(args: argparse.Namespace) -> int:
    action: Action = args.action
    actor = args.actor or getpass.getuser()
    with _Opened(args, read_only=False) as opened:
        controller = opened.controller
        state = controller.sync()
        to_step = None
        if action is Action.PROMOTE and args.full:
            to_step = opened.plan.last
            _confirm_full(state, to_step, opened.plan.steps[to_step].percent, args.yes)
        reason = args.reason or f"{action.value} by {actor}"
        try:
            t = controller.command(action, actor=actor, reason=reason, to_step=to_step,
                                   force=getattr(args, "force", False))
        except Refused as exc:
            print(f"shadow: refused: {exc}", file=sys.stderr)
            return 1
    print(describe(t))
    return 0


def describe(t: Transition) -> str:
    before, after = t.before, t.after
    came = f"step {before.step} ({before.percent:g} %, {before.status.value})" if before else "-"
    return (f"{t.action.value}: {came} → step {after.step} ({after.percent:g} %, "
            f"{after.status.value}) by {t.actor}: {t.reason}")


def _confirm_full(state: RolloutState, to_step: int, percent: float, yes: bool) -> None:
    question = (f"promote rollout {state.rollout!r} from {state.percent:g} % straight to "
                f"{percent:g} % (step {to_step})?")
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"--full: {question} Confirm with --yes")
    answer = input(f"{question} Type the rollout's name to confirm: ").strip()
    if answer != state.rollout:
        raise ConfigError("--full: not confirmed; nothing changed")

