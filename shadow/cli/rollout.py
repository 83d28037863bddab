"""``shadow rollout …``: status, history and a person's commands.

Every command reads the configuration for the store's path. When a daemon
runs that store (``shadow.service.control.DaemonFile``), the command goes through the
daemon's control API, with the token from the environment variable the
configuration names (``daemon.api.token_env``, default ``SHADOW_API_TOKEN``), and the
daemon's plan is the one in force; otherwise it reads the plan from the
configuration and opens the store file. The output is the same either way.
Changes are audited under the name of the API token they came with (none,
shown as ``local``, when the file was opened), and beside it the name the
person claims (``--actor``, or the environment variable ``SHADOW_ACTOR``, or
the login name), labelled as claimed.

Without a configuration (no ``--config``, no ``SHADOW_CONFIG``), ``--db`` names the
store, and a daemon must run it: its plan is the one in force.

Steps are numbered from 0, shadow mode: a plan of 5 steps goes from step 0 to step 4, and
the status says ``step 1 of 5 (0-4)`` where the API says ``"step": 1, "steps": 5``.

Parsing imports nothing beyond the CLI: each handler imports what it needs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadow.cli import simulate as simulation
from shadow.cli.options import existing_store, positive_int
from shadow.cli.program import program
from shadow.core.errors import ConfigError

if TYPE_CHECKING:
    from rollout.state import Action
    from shadow.config.file import Config
    from shadow.config.rollout import RolloutSpec
    from shadow.service.api_client import DaemonClient

_MARK = {"pass": "✓", "fail": "✗", "inconclusive": "…"}

# The actions with their help, in the order `shadow --help` lists them; the commands'
# names are rollout.state.Action's values (tests/cli/test_rollout_commands.py checks).
ACTIONS = {
    "status": "step, status, gate evidence and warnings",
    "history": "every transition: who (token, claimed actor), reason, evidence",
    "promote": "promote one step (or --full to the last)",
    "pause": "stop promotion; traffic and rollback stay as they are",
    "resume": "let a paused rollout progress again",
    "rollback": "take everything back to shadow mode now",
    "restart": "start again from shadow after a rollback or abort",
    "abort": "give up: shadow only until restarted",
    "simulate": "false-promotion and rollback rates of the gates, by simulation",
}
_COMMANDS = ("promote", "pause", "resume", "rollback", "restart", "abort")
_REASON_REQUIRED = ("rollback", "abort")


def add_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``rollout`` and its subcommands; ``common`` adds --db and --config."""
    rollout = commands.add_parser(
        "rollout", help="staged rollout: " + ", ".join(ACTIONS),
        description="Look at and steer the staged rollout configured under 'rollout'. "
        "status and history need no configuration when a daemon runs the store (--db).")
    sub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    status = sub.add_parser("status", help=ACTIONS["status"])
    common(status)
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.set_defaults(handler=_status)

    history = sub.add_parser("history", help=ACTIONS["history"])
    common(history)
    history.add_argument("--limit", type=positive_int, metavar="N", help="only the last N")
    history.add_argument("--format", choices=["table", "json"], default="table")
    history.set_defaults(handler=_history)

    for action in _COMMANDS:
        reason_required = action in _REASON_REQUIRED
        parser = sub.add_parser(action, help=ACTIONS[action])
        common(parser)
        parser.add_argument("--reason", required=reason_required, metavar="TEXT",
                            help="why, for the audit trail" + (" (required)"
                                                               if reason_required else ""))
        parser.add_argument("--actor", default=os.environ.get("SHADOW_ACTOR"), metavar="NAME",
                            help="who gives the command, recorded as claimed beside the API "
                                 "token's name (env SHADOW_ACTOR; default: login name)")
        if action == "promote":
            parser.add_argument("--full", action="store_true", help="to the last step at once")
            parser.add_argument("--yes", action="store_true", help="confirm --full without asking")
            parser.add_argument("--force", action="store_true",
                                help="promote although the gates have not passed (audited)")
        parser.set_defaults(handler=_command, action=action)

    simulate = sub.add_parser("simulate", help=ACTIONS["simulate"])
    simulation.add_arguments(simulate)
    simulate.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    code, text = simulation.run_command(args)
    if code == 2:
        raise ConfigError(text)
    print(text)
    return code


class _Target:
    """What a command works on: the plan from the configuration, the store it names.

    When a daemon runs that store, :attr:`daemon` is its API client and the
    command goes through it (the daemon is the store's single writer; its plan
    is the one in force). Otherwise the command opens the file with :class:`_Opened`.
    Without a configuration, :attr:`config` and :attr:`plan` are ``None`` and a daemon
    must run the store.

    Raises:
        ConfigError: neither a configuration with a rollout nor a daemon that runs the store.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from shadow.config.file import load_config
        from shadow.service.api_client import find_daemon

        self.config: Config | None = None
        self.plan: RolloutSpec | None = None
        if args.config is None:
            if args.db is None:
                raise ConfigError("--config FILE is required (or set SHADOW_CONFIG); without "
                                  "it, --db PATH of a store a running daemon owns")
            self.db = Path(args.db)
            self.daemon = find_daemon(self.db)
            if self.daemon is None:
                raise ConfigError(f"no daemon runs {self.db}: give --config FILE (or set "
                                  f"SHADOW_CONFIG), whose 'rollout' section is the plan")
            return
        self.config = load_config(args.config)
        if self.config.rollout is None:
            raise ConfigError(f"rollout: {args.config} has no 'rollout' section")
        self.db = self.config.store_at(args.db)
        self.plan = self.config.rollout
        self.daemon = find_daemon(self.db, token_env=self.config.daemon.api.token_env)


class _Opened:
    """The store, plan and controller one command works on."""

    def __init__(self, target: _Target, *, read_only: bool) -> None:
        from contextlib import ExitStack

        from rollout.controller import Controller
        from rollout.runtime import rolled_out
        from shadow.candidates import build_candidate
        from shadow.compare.comparators import build_comparator
        from shadow.store.database import Store

        config, plan = target.config, target.plan
        if config is None or plan is None:
            raise ConfigError(f"the daemon of {target.db} does not answer, and without "
                              f"--config there is no plan to open the store with")
        existing_store(target.db)
        self.plan: RolloutSpec = plan
        candidates = [build_candidate(spec) for spec in config.all_candidates()]
        if not candidates:
            raise ConfigError("candidate: the rollout needs the candidate it rolls out")
        candidate = rolled_out(self.plan, candidates)
        self.stack = ExitStack()
        self.store = self.stack.enter_context(Store(target.db, read_only=read_only))
        self.controller = Controller(
            self.store, self.plan, rollout=self.plan.name or candidate.name,
            candidate=candidate.name, version=candidate.version,
            comparator=build_comparator(config.comparator).name)

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()


def _through_daemon(target: _Target, use: Callable[[DaemonClient], int]) -> int | None:
    """``use(client)`` when a daemon runs the store; ``None`` to open the file instead.

    A daemon whose API refuses connections (starting, stopping, or a stale
    file whose pid was reused) received nothing: the file is opened instead.
    """
    import structlog

    from shadow.service.api_client import DaemonUnavailable

    if target.daemon is None:
        return None
    try:
        return use(target.daemon)
    except DaemonUnavailable as exc:
        structlog.get_logger(__name__).info(
            "daemon unavailable; opening the store directly", reason=str(exc))
        return None


def _status(args: argparse.Namespace) -> int:
    from rollout import audit
    from rollout.views import status_view

    target = _Target(args)

    def through_daemon(daemon: DaemonClient) -> int:
        return _print_status(daemon.rollout_status(), args.format)

    through = _through_daemon(target, through_daemon)
    if through is not None:
        return through
    with _Opened(target, read_only=True) as opened:
        state = opened.controller.attach()
        if state is None:
            name = opened.controller.rollout
            print(f"rollout {name!r} has not started: a replay or the daemon with this "
                  f"configuration starts it")
            return 0
        assessment = opened.controller.assess()
        last = audit.latest_evaluations(opened.store, state.rollout)
        recent = audit.history(opened.store, state.rollout, limit=1)
        # While the store is open: the view reads more of it than the assessment did.
        view = status_view(opened.controller, assessment, last,
                           recent[0].as_dict() if recent else None)
    return _print_status(view, args.format)


def _print_status(view: dict[str, Any], fmt: str) -> int:
    import orjson

    if fmt == "json":
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(_status_text(view))
    return 0




_VERDICTS = {"agree": "agreements", "disagree": "disagreements"}


def _evidence_text(e: dict[str, Any]) -> list[str]:
    from datetime import timedelta

    from rollout.gates import span

    window = span(timedelta(seconds=e["label_window_seconds"]))
    learned = " (learned)" if e["label_window_learned"] else ""
    lines = [
        f"  evidence: one vote per key ({e['unit']}); {e['past_label_window']:,} keys past "
        f"their label window of {window}{learned}, {e['labelled']:,} labelled, "
        f"{e['unlabelled_counted_against']:,} unlabelled counted against, "
        f"{e['expired']:,} never labelled and left out"
        + (f", {e['live_not_independent']:,} live keys judged only by outcomes that may echo "
           f"the AI left out" if e["live_not_independent"] else "")]
    delays = {d["verdict"]: d for d in e["label_delays"]}
    if delays:
        lines.append("  label delay: " + "; ".join(
            f"{_VERDICTS[verdict]} median {span(timedelta(seconds=d['median_seconds']))}, p95 "
            f"{span(timedelta(seconds=d['p95_seconds']))} ({d['labelled']:,})"
            for verdict, d in sorted(delays.items())))
    d = e["detector"]
    if d is not None:
        pace = (f", {d['per_day']:.1f} per day; a drop takes about {d['needed']:.0f} to catch "
                f"({'in time' if d['in_time'] else 'NOT in time'})"
                if d["per_day"] is not None else "")
        lines.append(f"  rollback detector: {d['independent_labels']:,} independent labels, "
                     f"CUSUM {d['statistic']} of {d['threshold']}{pace}")
    tiers = e.get("tiers")
    if tiers is not None:
        for h in tiers["detectors"]:
            state = ("FELL BACK" if h["tier"] in tiers["fallen"] else
                     "alarmed" if h["alarmed_at"] is not None else "holding")
            agreement = f" ({h['agreement']:.1%})" if h["agreement"] is not None else ""
            lines.append(f"  tier {h['tier']}: {h['agreed']:,} of {h['units']:,} units agreed"
                         f"{agreement}, CUSUM {h['statistic']} of {h['threshold']}: {state}")
    return lines


def _tiers_text(tiers: dict[str, Any]) -> list[str]:
    label = f"; labels at {tiers['label_path']}" if tiers["label_path"] else ""
    lines = [f"  tiers (the first matching rule wins{label}):"]
    lines += [f"    {r['rule']}: {r['text']}" for r in tiers["rules"]]
    lines.append(f"    otherwise: {tiers['default']}")
    recent = tiers["recent"]
    if recent["predictions"]:
        shares = ", ".join(f"{tier} {share:.1%}" for tier, share in recent["shares"].items())
        lines.append(f"    latest {recent['predictions']:,} predictions: {shares}")
    else:
        lines.append("    no prediction has a tier yet")
    return lines


def _status_text(view: dict[str, Any]) -> str:
    from rollout import audit

    lines = [
        f"rollout {view['rollout']}: {view['candidate']} {view['version'] or ''}".rstrip(),
        f"  {step_of(view['step'], view['steps'])} · {view['percent']:g} % · "
        f"{view['status']} since {view['step_started_at']}",
        f"  live share of all traffic {view['live_share']:.2%} (holdout {view['holdout']:.0%},"
        f" review {view['review']:.0%})",
    ]
    if view.get("evidence"):
        lines.extend(_evidence_text(view["evidence"]))
    if view.get("tiers"):
        lines.extend(_tiers_text(view["tiers"]))
    for kind in ("promotion", "rollback"):
        evaluation = view[kind]
        if evaluation is None:
            continue
        lines.append(f"{kind} gates: {evaluation['phase']}")
        for check in evaluation["checks"]:
            lines.append(f"  {_MARK[check['phase']]} {check['name']:<24} {check['detail']}")
    if view["last_transition"]:
        t = view["last_transition"]
        lines.append(f"last change: {t['action']} by {audit.credited(t['actor'], t.get('token'))} "
                     f"at {t['at']}: {t['reason']}")
    for warning in view["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def step_of(step: int, steps: int) -> str:
    """``step 1 of 5 (0-4)``: the API's ``step`` and ``steps``, numbered from 0 (shadow)."""
    return f"step {step} of {steps} (0-{steps - 1})"


def _history(args: argparse.Namespace) -> int:
    from rollout import audit

    target = _Target(args)
    through = _through_daemon(
        target, lambda d: _print_history(d.rollout_history(args.limit), args.format))
    if through is not None:
        return through
    with _Opened(target, read_only=True) as opened:
        records = audit.history(opened.store, opened.controller.rollout, limit=args.limit)
    return _print_history([r.as_dict() for r in records], args.format)


def _print_history(records: list[dict[str, Any]], fmt: str) -> int:
    """``records`` as ``AuditRecord.as_dict`` gives them (the control API serves the same)."""
    import orjson

    from rollout import audit

    if fmt == "json":
        sys.stdout.write(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not records:
        print("no transitions yet")
    for r in records:
        came = f"{r['from_status']}@{r['from_step']}" if r["from_status"] else "-"
        print(f"{r['at']}  {r['action']:<15} {came:>20} → "
              f"{r['to_status']}@{r['to_step']} ({r['percent']:g} %)  by "
              f"{audit.credited(r['actor'], r.get('token'))}: {r['reason']}")
    return 0


def _command(args: argparse.Namespace) -> int:
    from rollout.state import Action, Refused
    from rollout.views import describe

    action = Action(args.action)
    actor = args.actor or getpass.getuser()
    reason = args.reason or f"{action.value} by {actor}"
    full = action is Action.PROMOTE and args.full
    force = getattr(args, "force", False)
    target = _Target(args)
    try:
        through = _through_daemon(
            target, lambda d: _command_via(d, target.plan, action, actor, reason, full, force,
                                           args.yes if full else False))
        if through is not None:
            return through
        with _Opened(target, read_only=False) as opened:
            controller = opened.controller
            state = controller.sync()
            to_step = None
            if full:
                to_step = opened.plan.last
                _confirm_full(state.rollout, state.percent, to_step,
                              opened.plan.steps[to_step].percent, args.yes)
            t = controller.command(action, actor=actor, reason=reason, to_step=to_step,
                                   force=force)
    except Refused as exc:
        # Through a daemon the refusal names the API's field; here the option says it, and
        # a command it names runs as this one was invoked.
        from rollout.controller import FORCE_FIELD, FORCE_OPTION

        message = str(exc).replace(FORCE_FIELD, FORCE_OPTION)
        print(f"shadow: refused: {message.replace('(shadow rollout ', f'({program()} rollout ')}",
              file=sys.stderr)
        return 1
    print(describe(t))
    return 0


def _command_via(daemon: DaemonClient, plan: RolloutSpec | None, action: Action, actor: str,
                 reason: str, full: bool, force: bool, yes: bool) -> int:
    """The command through the daemon: its plan is in force, so --full asks about that."""
    if full:
        view = daemon.rollout_status()
        last = int(view["steps"]) - 1
        # The local plan names the percent only if it is the daemon's plan.
        percent = (plan.steps[last].percent if plan is not None
                   and len(plan.steps) == view["steps"] else None)
        _confirm_full(str(view["rollout"]), float(view["percent"]), last, percent, yes)
    result = daemon.rollout_command(action.value, actor=actor, reason=reason, full=full,
                                    force=force)
    print(result["transition"])
    return 0



def _confirm_full(rollout: str, percent_now: float, to_step: int, percent: float | None,
                  yes: bool) -> None:
    to = f"{percent:g} % (step {to_step})" if percent is not None else f"step {to_step}"
    question = f"promote rollout {rollout!r} from {percent_now:g} % straight to {to}?"
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"--full: {question} Confirm with --yes")
    answer = input(f"{question} Type the rollout's name to confirm: ").strip()
    if answer != rollout:
        raise ConfigError("--full: not confirmed; nothing changed")
