"""The ``shadow`` command.

Exit codes: 0 success, 1 runtime failure (``shadow: failed: …``), 2 what the user must fix
first (``shadow: error: …``): one line on stderr, never a traceback (``shadow.cli.options``).

Parsing the arguments imports only argparse and the CLI's modules; each handler imports what
it needs, so that ``shadow --help`` answers at once (``bench/cli_startup.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shadow.cli.options import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    DeprecatedAlias,
    Parser,
    add_global_options,
    add_global_options_below,
    existing_store,
    input_file,
    output_directory,
    positive_int,
)
from shadow.cli.program import program
from shadow.core.errors import ConfigError, ShadowError, first_line

DISTRIBUTION = "shadow-rollout"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from shadow.core import logs

    logs.configure(level=_chosen(args.log_level, "SHADOW_LOG_LEVEL", "warning"),
                   fmt=_chosen(args.log_format, "SHADOW_LOG_FORMAT", "console"))
    # A candidate named module:function usually lives next to the user, as with `python -m`.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"shadow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ShadowError as exc:
        print(f"shadow: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:
        if not _is_duckdb_error(exc):
            raise
        # Whatever query met it: a damaged or truncated store file, most likely.
        print(f"shadow: failed: the store could not be read: {first_line(exc)}; if its file "
              f"is damaged, restore a backup (README, The store)", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("shadow: interrupted; everything committed so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`shadow … | head`); nothing is wrong with the work.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _is_duckdb_error(exc: BaseException) -> bool:
    # duckdb is imported by the handlers that need it, never here: an error of its can only
    # have come from one of them.
    duckdb = sys.modules.get("duckdb")
    return duckdb is not None and isinstance(exc, duckdb.Error)


class _Version(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version(DISTRIBUTION)
        except PackageNotFoundError:
            found = f"unknown ({DISTRIBUTION} is not installed)"
        print(f"shadow {found}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    from shadow.cli.rollout import ACTIONS

    parser = Parser(
        prog="shadow",
        description="Run an AI system in shadow mode beside the humans, compare, report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="rollout actions (shadow rollout ACTION --help):\n" + "\n".join(
            f"  {name:<10} {text}" for name, text in ACTIONS.items())
        + "\n\nexit codes: 0 success; 1 the work failed (shadow: failed: ...); 2 something "
        "to fix first:\n  usage, configuration or inputs (shadow: error: ...); 3 a gate failed "
        "(eval, calibrate --strict)",
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    add_global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser(
        "replay", help="run a candidate in shadow mode over exported events",
        description="Run a candidate in shadow mode on every event, store everything, compare "
        "with the outcomes and print a summary. Re-running over the same files adds nothing.",
    )
    replay.add_argument("events", nargs="+", type=Path, metavar="EVENTS",
                        help="event files (.jsonl, .csv, .parquet)")
    replay.add_argument("--outcomes", nargs="+", type=Path, default=[], metavar="OUTCOMES",
                        help="outcome files (.jsonl, .csv, .parquet)")
    replay.add_argument("--candidate", metavar="MODULE:FUNC|URL",
                        help="the candidate: a Python callable, or the URL of a JSON endpoint "
                        "(default: 'candidate' in the config)")
    _add_db(replay)
    _add_config(replay)
    replay.add_argument("--compare", metavar="NAME",
                        help="comparator: a kind (exact, normalized, set, numeric) or a name "
                        "under 'comparators' in the config (default: 'comparator' in the config)")
    replay.add_argument("--concurrency", type=int, metavar="N",
                        help="HTTP candidates: calls in flight at most (default: the config's, 16)")
    replay.add_argument("--write-batch", type=positive_int, metavar="N",
                        help="records per write transaction (default: store.batch_size, 20000; "
                        "formerly --batch-size, which still works)")
    replay.add_argument("--batch-size", dest="write_batch", type=positive_int,
                        action=DeprecatedAlias, instead="--write-batch",
                        why="records per write transaction, not the candidate's batch_size",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    replay.add_argument("--retry-errors", action="store_true",
                        help="also predict again every stored event whose prediction failed")
    replay.add_argument("--quiet", action="store_true", help="print no progress")
    replay.set_defaults(handler=_replay)

    report = commands.add_parser(
        "report", help="report agreement, readiness, errors, latency and cost",
        description="The comparison report: a terminal table, JSON, a Markdown summary with the "
        "verdict to paste into a ticket, or one self-contained HTML file with charts for owners. "
        "What 'ready' means comes from the config's 'report' section (else the rollout's gates).")
    _add_db(report)
    _add_config(report)
    report.add_argument("--format", choices=["table", "json", "markdown", "html"],
                        default="table")
    report.add_argument("--out", type=Path, metavar="FILE", help="write here instead of stdout")
    report.set_defaults(handler=_report)

    dead = commands.add_parser(
        "dead-letters", help="show records that could not be read, with the reason",
        description="Show the most recent dead letters: malformed or invalid input records, "
        "kept with their raw text, source position and the reason.",
    )
    _add_db(dead)
    dead.add_argument("--limit", type=positive_int, default=20, metavar="N",
                      help="how many (default 20)")
    dead.add_argument("--format", choices=["table", "json"], default="table")
    dead.set_defaults(handler=_dead_letters)

    backup = commands.add_parser(
        "backup", help="copy the store, as of one moment, to a new file",
        description="Copy the store to a new DuckDB file, consistent as of one moment, while "
        "a daemon runs it (through its API, into its backup folder daemon.jobs.backup_dir; "
        "intake waits during the copy) or not. The copy is checked table by table and only "
        "then given its name; it never overwrites a file, and only its owner may read it. "
        "Restore by putting the copy in the store's place while no daemon runs.")
    backup.add_argument("target", metavar="TARGET",
                        help="with no daemon running: the new file (its directory must exist); "
                        "with one: a file name in its backup folder (needs an admin token)")
    _add_db_and_config(backup)
    backup.add_argument("--format", choices=["text", "json"], default="text")
    backup.set_defaults(handler=_backup)

    token = commands.add_parser(
        "token", help="make a control API token and its line for daemon.api.tokens_file",
        description="Print a new random token for the daemon's control API, and the line that "
        "grants it in daemon.api.tokens_file (its SHA-256, never the token itself). The line "
        "goes to stdout, so `shadow token ana --scope operate >> tokens` adds it; the token "
        "goes to stderr, shown this once. The daemon reads the file when it starts.")
    token.add_argument("name", metavar="NAME",
                       help="whose token it is: recorded with every command made with it")
    token.add_argument("--scope", required=True, choices=["read", "operate", "admin"],
                       help="read: status, reports, metrics; operate: also rollout commands; "
                       "admin: also backups")
    token.set_defaults(handler=_token)

    demo = commands.add_parser(
        "demo", help="generate a support-ticket workload, replay it and report",
        description="Generate a realistic support-ticket workload and an imperfect sample "
        "candidate, replay, and report. Needs no services and no network.",
    )
    demo.add_argument("--dir", type=Path, default=Path("shadow-demo"),
                      help="where to write the files (default ./shadow-demo)")
    demo.add_argument("--events", type=int, default=5000, help="tickets to generate")
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run", help="run the daemon: sources, candidates, rollout, jobs and control API",
        description="Run beside production until SIGTERM or SIGINT: consume the configured "
        "sources, predict, store, publish live decisions, evaluate the rollout on schedule and "
        "serve the control API. Logs are JSON lines unless stderr is a terminal.")
    _add_config(run)
    _add_db(run)
    run.add_argument("--role", choices=["all", "recorder"], default="all",
                     help="all (default): everything in this process; recorder: store what "
                     "candidate workers hand over on workers.topic, and call no candidate "
                     "(docs/scaling.md)")
    run.set_defaults(handler=_run)

    worker = commands.add_parser(
        "worker", help="run a candidate worker: events in, predictions to the recorder out",
        description="Consume the event sources (Kafka topics) in their consumer groups, call "
        "the candidates, publish live decisions by the rollout's state on "
        "rollout.state_topic, and hand every prediction to the recorder on workers.topic; "
        "until SIGTERM or SIGINT. Run as many as the candidate needs (docs/scaling.md).")
    _add_config(worker)
    worker.add_argument("--name", help="how this worker names itself (default HOST:PID)")
    worker.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics")
    worker.add_argument("--batch-size", type=int, default=500, metavar="N",
                        help="records read per poll of each source (default 500)")
    worker.set_defaults(handler=_worker)

    from shadow.cli.calibrate import add_calibrate_parser
    from shadow.cli.evaluate import add_eval_parser
    from shadow.cli.send import add_send_parser
    from shadow.cli.show import add_show_parser
    from shadow.cli.status import add_status_parser

    add_eval_parser(commands, _add_config)
    add_calibrate_parser(commands, _add_config)
    add_send_parser(commands, _add_config)
    add_show_parser(commands, _add_db_and_config)
    add_status_parser(commands, _add_db_and_config)

    from shadow.cli.rollout import add_parser as add_rollout

    add_rollout(commands, _add_db_and_config)
    add_global_options_below(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    from shadow.config.file import load_config
    from shadow.config.workers import DaemonRole
    from shadow.core import logs
    from shadow.service.daemon import Daemon, store_to_run

    if args.config is None:
        raise ConfigError("--config is required (or set SHADOW_CONFIG)")
    config = load_config(args.config)
    role = DaemonRole(args.role)
    db = store_to_run(config, db=args.db, base_dir=Path(args.config).resolve().parent,
                      role=role)
    # A daemon logs what it does (info) as JSON lines for a collector, unless a person watches.
    logs.configure(level=_chosen(args.log_level, "SHADOW_LOG_LEVEL", "info"),
                   fmt=_chosen(args.log_format, "SHADOW_LOG_FORMAT",
                               "console" if sys.stderr.isatty() else "json"),
                   redact=config.logging.redact)
    return Daemon(config, store_path=db, base_dir=Path(args.config).resolve().parent,
                  role=role).run()


def _worker(args: argparse.Namespace) -> int:
    from shadow.config.file import load_config
    from shadow.core import logs
    from shadow.service.worker import WorkerProcess, parse_listen

    if args.config is None:
        raise ConfigError("--config is required (or set SHADOW_CONFIG)")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: expected a positive number, got {args.batch_size}")
    config = load_config(args.config)
    metrics = parse_listen(args.metrics) if args.metrics else None
    logs.configure(level=_chosen(args.log_level, "SHADOW_LOG_LEVEL", "info"),
                   fmt=_chosen(args.log_format, "SHADOW_LOG_FORMAT",
                               "console" if sys.stderr.isatty() else "json"),
                   redact=config.logging.redact)
    return WorkerProcess(config, base_dir=Path(args.config).resolve().parent, name=args.name,
                         metrics=metrics, batch_size=args.batch_size).run()


def _chosen(flag: str | None, variable: str, default: str) -> str:
    return flag or os.environ.get(variable) or default


def _add_db_and_config(parser: argparse.ArgumentParser) -> None:
    _add_db(parser)
    _add_config(parser)


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=os.environ.get("SHADOW_DB"), metavar="PATH",
                        help="the DuckDB store (env SHADOW_DB; or store.path in the config)")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=os.environ.get("SHADOW_CONFIG"),
                        metavar="FILE", help="YAML configuration (env SHADOW_CONFIG)")


def _replay(args: argparse.Namespace) -> int:
    from shadow.config.file import load_config
    from shadow.pipeline.replay import ReplayRequest, describe, replay_files

    for path in [*args.events, *args.outcomes]:
        input_file(path)
    request = ReplayRequest(
        events=args.events, outcomes=args.outcomes, db=args.db, config=args.config,
        candidate=args.candidate, compare=args.compare, batch_size=args.write_batch,
        concurrency=args.concurrency, retry_errors=args.retry_errors,
    )
    config = load_config(args.config)
    store = args.db if args.db is not None else config.store.path
    if store is not None:
        _not_run_by_a_daemon(Path(store))
    summary = replay_files(request, progress=None if args.quiet else _progress())
    print(describe(summary, request, program=program()))
    if store is not None:
        print(_verdict_of(Path(store), config))
    return EXIT_OK


def _verdict_of(db: Path, config: Any) -> str:
    """The owner report's verdict lines of a store, as ``shadow report`` shows them."""
    from shadow.reports.build import owner_options
    from shadow.reports.owner import owner_report
    from shadow.reports.verdict import headlines, verdict_text
    from shadow.store.database import Store

    with Store(db, read_only=True) as opened:
        return verdict_text(headlines(owner_report(opened, owner_options(config))))


def _not_run_by_a_daemon(store: Path) -> None:
    """A replay writes the store itself: refused, saying which, when a daemon runs it.

    Raises:
        ConfigError: a running daemon owns ``store``.
    """
    from shadow.service.control import DaemonFile

    found = DaemonFile.read(store)
    if found is not None:
        raise ConfigError(
            f"a running daemon (pid {found.pid}, {found.api}) owns the store {store}; stop it "
            f"to replay into this store, or replay into another one with --db")


def _report(args: argparse.Namespace) -> int:
    import orjson

    from shadow.config.file import load_config
    from shadow.pipeline.readiness import remembered
    from shadow.reports import render
    from shadow.reports.build import report_text
    from shadow.reports.summary import CoreReport
    from shadow.reports.verdict import headlines_of_json
    from shadow.service.api_client import DaemonClient, from_daemon_or_store

    config = load_config(args.config)
    db = existing_store(config.store_at(args.db))
    color = args.out is None and sys.stdout.isatty()

    def ask(daemon: DaemonClient) -> str:
        # Through a running daemon the report is made there, with the daemon's configuration;
        # the table is drawn here from its JSON, so that it has colour on a terminal.
        if args.format != "table":
            return daemon.report(args.format)
        data = orjson.loads(daemon.report("json"))
        return render.to_table(CoreReport.from_dict(data), color=color,
                               verdicts=headlines_of_json(data))

    # Without --config, the readiness settings the store was last run with (replay, daemon).
    text = from_daemon_or_store(
        db, ask, lambda store: report_text(
            store, config if args.config is not None else remembered(store) or config,
            args.format, out=args.out, color=color))
    _emit(text, args.out)
    return EXIT_OK


def _dead_letters(args: argparse.Namespace) -> int:
    from shadow.reports import render
    from shadow.reports.queries import DeadLetterRow
    from shadow.reports.summary import recent_dead_letters
    from shadow.reports.values import as_json, from_json
    from shadow.service.api_client import from_daemon_or_store

    if args.db is None:
        raise ConfigError("--db is required (or set SHADOW_DB)")
    existing_store(args.db)
    rows = from_daemon_or_store(
        args.db,
        lambda daemon: [from_json(DeadLetterRow, row) for row in daemon.dead_letters(args.limit)],
        lambda store: recent_dead_letters(store, limit=args.limit))
    if args.format == "json":
        sys.stdout.write(render.to_json({"dead_letters": as_json(rows)}))
    else:
        sys.stdout.write(render.dead_letters_table(rows))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from shadow.demo.run import run_demo

    if args.events < 100:
        raise ConfigError("--events: expected at least 100 tickets")
    output_directory(args.dir)
    print(run_demo(args.dir, events=args.events, progress=_progress(), program=program(),
                   program_anywhere=program(anywhere=True)))
    return EXIT_OK


def _backup(args: argparse.Namespace) -> int:
    import orjson

    from shadow.config.file import load_config
    from shadow.service.api_client import DaemonClient, from_daemon_or_store
    from shadow.store.backup import Backup, backup, check_name

    config = load_config(args.config)
    db = existing_store(config.store_at(args.db))
    folder = Path(config.daemon.jobs.backup_dir)
    if args.config is not None and not folder.is_absolute():
        folder = Path(args.config).resolve().parent / folder
    where = str(folder) if args.config is not None else "the daemon's backup folder"

    def through(daemon: DaemonClient) -> dict[str, Any]:
        # A daemon writes backups into its own folder only: a path is refused here, before
        # anything is sent, with where they go.
        try:
            check_name(args.target, where)
        except ConfigError as exc:
            raise ConfigError(f"{exc}, not a path: a daemon runs {db}") from None
        return daemon.backup(args.target)

    done = Backup.from_dict(from_daemon_or_store(
        db, through,
        lambda store: backup(store, Path(args.target).expanduser().absolute()).as_dict()))
    if args.format == "json":
        sys.stdout.write(orjson.dumps(done.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return EXIT_OK
    counts = ", ".join(f"{done.rows.get(t, 0):,} {t}"
                       for t in ("events", "predictions", "outcomes", "comparisons"))
    print(f"backed up {db} to {done.path} as of {done.taken_at.isoformat()}: {counts} "
          f"({done.size_bytes / 1e6:,.1f} MB in {done.seconds:.2f} s)")
    print(f"to restore: stop the daemon, then put {done.path.name} in place of {db}")
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    import re

    from shadow.config.daemon import TOKEN_NAME_PATTERN, Scope
    from shadow.service.api_tokens import new_token, tokens_file_line

    if not re.match(TOKEN_NAME_PATTERN, args.name):
        raise ConfigError(f"NAME: {args.name!r}: letters, digits and . _ @ + - only, at most 64")
    token = new_token()
    print(tokens_file_line(args.name, Scope(args.scope), token))
    print(f"token of {args.name} ({args.scope}), shown this once: {token}", file=sys.stderr)
    return EXIT_OK


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ShadowError(f"cannot write {out}: {exc.strerror}") from exc
    print(f"wrote {out}", file=sys.stderr)


def _progress() -> Any:
    from shadow.pipeline.progress import progress_reporter

    return progress_reporter(sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
