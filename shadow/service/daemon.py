"""``shadow run``: the long-running process beside production.

One pipeline thread owns the store (DuckDB allows one writer): it polls every
source in turn, predicts, writes, commits offsets and publishes live
decisions. Everything else that needs the store (scheduled jobs, control API
calls) is handed to that thread and runs between two batches. Without a rollout, event
batches take the columnar path (:mod:`shadow.pipeline.columnar`), a Kafka topic's polls
read as one batch each.

No poll waits: a pass over the sources takes what each has, and only a pass
that found nothing sleeps, until a webhook delivery or a control call wakes it
or ``daemon.poll_timeout_s`` has passed. Deliveries that arrive while a batch
is written therefore share the next one (a group commit). A source whose system
is away is retried in the background (:mod:`shadow.pipeline.source_guard`) while the
others go on.

Shutdown (SIGTERM or SIGINT): webhook intake stops at once (new deliveries
get 503 and the vendor retries), the batch in flight finishes, deliveries
already accepted are stored and acknowledged within ``shutdown_deadline``,
live decisions are published, offsets committed, and the process exits 0. A
restart resumes from the committed offsets; anything read but not committed
is read again and recognised as already stored.
"""

from __future__ import annotations

import os
import queue
import resource
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from connectors.base import Source
from connectors.files import FileSource
from connectors.mapping import EventMapper, OutcomeMapper
from connectors.signatures import verifier
from connectors.specs import SourceSpec, WebhookSourceSpec
from connectors.webhook_server import WebhookServer
from connectors.webhooks import WebhookSource
from shadow.candidates import build_candidate
from shadow.compare.comparators import Comparator, build_comparator
from shadow.compare.step import compare
from shadow.config.file import Config
from shadow.config.workers import RECORDER_FETCHES, DaemonRole
from shadow.core.errors import ConfigError, StoreError
from shadow.core.models import utc_now
from shadow.pipeline.columnar import ColumnarPipeline
from shadow.pipeline.readiness import remember
from shadow.pipeline.runner import Pipeline, ReplaySummary
from shadow.pipeline.source_guard import GuardedSource, SourceStatus
from shadow.pipeline.verdicts import VerdictMapper
from shadow.service.api_tokens import Tokens, load_tokens
from shadow.service.control import DaemonFile, DaemonLock
from shadow.service.jobs import Job, Jobs, apply_retention, checkpoint, write_reports
from shadow.store.backup import backup_in_turn
from shadow.store.database import Store

if TYPE_CHECKING:
    from rollout.controller import Controller
    from rollout.runtime import LiveRollout
    from shadow.service.runtime_metrics import RuntimeMetrics

log = structlog.get_logger(__name__)

_CALL_TIMEOUT_S = 120.0
_SWITCH_INTERVAL_S = 0.005
"""How long a thread may hold the GIL while another waits for it. Python's 5 ms meant
that each return from DuckDB on the pipeline thread (which releases the GIL inside)
could wait that long behind the webhook server's thread: four or five per batch, on
every delivery's way to its answer."""
_KAFKA_POLL_S = 0.01
"""A Kafka poll waits this long at most. Not zero: kafka-python joins a group and finds
a topic created after it subscribed only in polls that are given some time."""
_BACKUP_TIMEOUT_S = 3600.0


class Daemon:
    """Runs a configuration until told to stop; implements ``shadow.service.control.Control``."""

    def __init__(self, config: Config, *, store_path: Path, base_dir: Path,
                 now: Callable[[], datetime] = utc_now, role: DaemonRole = DaemonRole.ALL) -> None:
        self.config, self.store_path, self.base_dir, self.now = config, store_path, base_dir, now
        self.role = role
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._tasks: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ready = False
        self._started = False
        self._started_at = now()
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.comparator: Comparator | None = None
        self.controller: Controller | None = None
        self.live: LiveRollout | None = None
        self.webhooks: WebhookServer | None = None
        self.runtime: RuntimeMetrics | None = None
        self._sources: list[Source] = []

    # -- lifecycle --------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, shut down cleanly; returns 0.

        Raises:
            ConfigError: the configuration cannot run (no sources, no token, …).
            StoreError: the store is held by another daemon or process.
        """
        self._thread = threading.current_thread()
        refuse(startup_problems(self.config, store_path=self.store_path, base_dir=self.base_dir,
                                role=self.role))
        tokens = self._tokens()
        _raise_open_files_limit()
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        new_files = _NewFiles(self.store_path)
        lock = DaemonLock(self.store_path)
        if not lock.acquire():
            other = DaemonFile.read(self.store_path)
            held = (f" (pid {other.pid}, API at {other.api})" if other is not None else "")
            raise StoreError(f"another daemon{held} is running for {self.store_path}; "
                             f"stop it first")
        from shadow.service.runtime_metrics import RuntimeMetrics

        self.runtime = RuntimeMetrics()
        with ExitStack() as stack:
            stack.callback(lock.release)
            # Refused before it ran (a port taken, a source that cannot start): the files
            # this start made go with it, removed while the lock is still held.
            stack.callback(lambda: None if self._started else new_files.remove())
            self.store = stack.enter_context(Store(self.store_path))
            remember(self.store, self.config, now=self.now())
            feeds = self._wire(stack)
            from shadow.service.api import ApiServer

            api_spec = self.config.daemon.api
            api = ApiServer(self, host=api_spec.host, port=api_spec.port, tokens=tokens)
            api.start()
            stack.callback(api.stop)
            DaemonFile(pid=os.getpid(), api=api.url, store=str(self.store_path),
                       started_at=self._started_at.isoformat(),
                       token_env=api_spec.token_env).write(self.store_path)
            stack.callback(DaemonFile.remove, self.store_path)
            jobs = Jobs(self.store, self._jobs(), self.call, now=self.now,
                        on_result=self._job_result)
            jobs.start()
            stack.callback(jobs.stop)
            self._install_signals()
            self._started = self._ready = True
            log.info("daemon started", store=str(self.store_path), api=api.url,
                     sources=[s.name for s in self._sources], pid=os.getpid())
            self._loop(feeds)
            self._ready = False
            jobs.stop()
            self._shut_down(feeds)
        log.info("daemon stopped", store=str(self.store_path))
        return 0

    def stop(self) -> None:
        """Ask the daemon to shut down (what SIGTERM does)."""
        self._stop.set()
        self._wake.set()
        if self.webhooks is not None:
            self.webhooks.stop_intake()

    def _tokens(self) -> Tokens:
        """The control API's tokens; one with every scope warns how to split it."""
        spec = self.config.daemon.api
        tokens = load_tokens(spec, base_dir=self.base_dir)
        if spec.single_token:
            log.warning(
                "one api token has every scope",
                variable=spec.token_env,
                advice="the metrics scraper and every operator can roll the AI out to all "
                       "traffic and back up the store; give each their own token with only "
                       "the scope it needs under daemon.api.tokens (read: status, reports, "
                       "metrics; operate: rollout commands; admin: backups) or "
                       "daemon.api.tokens_file (README, Threat model)")
        else:
            log.info("api tokens", scopes={t.name: t.scope.value for t in tokens})
        return tokens

    def _install_signals(self) -> None:
        stop_on_signals(self.stop)

    # -- wiring -------------------------------------------------------------------

    def _wire(self, stack: ExitStack) -> list[Any]:
        config, store = self.config, self.store
        assert store is not None
        candidates = [build_candidate(spec) for spec in config.all_candidates()]
        if not candidates:
            raise ConfigError("candidate: the daemon needs a candidate to run")
        recording = self.role is DaemonRole.RECORDER
        for candidate in candidates:
            if not recording:  # a recorder only names them: workers call them
                stack.enter_context(candidate)
        self.comparator = build_comparator(config.comparator)
        if not config.sources.events and not recording:
            raise ConfigError("sources.events: the daemon needs at least one event source")
        events = [] if recording else [_guarded(self._source(spec, "event"))
                                       for spec in config.sources.events]
        recorded = [_guarded(self._handed_over())] if recording else []
        outcomes = [_guarded(self._source(spec, "outcome")) for spec in config.sources.outcomes]
        verdicts = [_guarded(self._source(spec, "verdict")) for spec in config.sources.verdicts]
        if self.config.rollout is not None:
            from rollout.runtime import open_rollout

            self.live = open_rollout(self.config.rollout, store, candidates, self.comparator,
                                     stack, now=self.now)
            self.controller = self.live.controller
        self.pipeline = ColumnarPipeline(
            store, candidates, self.comparator,
            event_mapper=EventMapper(config.mapping.events),
            outcome_mapper=OutcomeMapper(config.mapping.outcomes),
            verdict_mapper=VerdictMapper(config.mapping.verdicts),
            batch_size=config.store.batch_size, now=self.now, rollout=self.live,
            progress=self.runtime.progress if self.runtime is not None else None,
            evaluate_each_batch=False, remember_ids=False)
        for source in [*events, *recorded, *outcomes, *verdicts]:
            stack.enter_context(source)
            self._sources.append(source)
        webhook_sources = [s for s in self._sources if isinstance(s, WebhookSource)]
        if webhook_sources:
            spec = config.daemon.webhooks
            self.webhooks = WebhookServer(
                host=spec.host, port=spec.port, sources=webhook_sources,
                public_url=spec.public_url, header_timeout_s=spec.header_timeout.total_seconds(),
                body_timeout_s=spec.body_timeout.total_seconds(),
                max_connections=spec.max_connections)
            self.webhooks.start()
            stack.callback(self.webhooks.stop)
        return self.pipeline.feeds(events, outcomes, verdicts, recorded=recorded)

    def _handed_over(self) -> Source:
        """The recorder's source: what candidate workers publish to ``workers.topic``."""
        from connectors.kafka import KafkaSource, Start, consumer_options

        spec = self.config.workers
        assert spec is not None
        return KafkaSource(bootstrap=spec.bootstrap, topics=[spec.topic], group_id=spec.group,
                           start=Start.COMMITTED, poll_timeout_s=_KAFKA_POLL_S,
                           options=RECORDER_FETCHES | consumer_options(spec.options))

    def _source(self, spec: SourceSpec, kind: str) -> Source:
        if spec.kind == "file":
            return FileSource(self._beside_config(spec.path))
        if spec.kind == "kafka":
            from connectors.kafka import KafkaSource, Start

            return KafkaSource(bootstrap=spec.bootstrap, topics=spec.topics,
                               group_id=spec.group, start=Start(spec.start),
                               poll_timeout_s=_KAFKA_POLL_S, options=spec.options)
        if spec.kind == "imap":
            from connectors.imap import Role
            from connectors.imap_config import imap_source

            return imap_source(spec, role=Role(kind + "s"), store_path=self.store_path,
                               base_dir=self.base_dir, environ=os.environ,
                               on_arrival=self._wake.set)
        secret = None
        if spec.secret_env is not None:
            secret = os.environ.get(spec.secret_env)
            if not secret:
                raise ConfigError(f"sources: webhook {spec.name!r} needs the environment "
                                  f"variable {spec.secret_env} (secret_env) set")
        return WebhookSource(name=spec.name, path=spec.path, kind=kind, scheme=spec.scheme,
                             secret=secret, tolerance_s=spec.tolerance.total_seconds(),
                             max_body_bytes=spec.max_body_bytes,
                             ack_timeout_s=spec.ack_timeout.total_seconds(),
                             poll_timeout_s=0.0, on_arrival=self._wake.set)

    def _beside_config(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.base_dir / path

    def _jobs(self) -> list[Job]:
        spec = self.config.daemon.jobs
        store = self.store
        assert store is not None
        jobs = [
            Job("compare", spec.compare_every, self._compare),
            Job("report", spec.report_every,
                lambda: write_reports(store, self.config, self._beside_config(spec.reports_dir),
                                      self.now())),
            Job("checkpoint", spec.checkpoint_every, lambda: checkpoint(store)),
        ]
        if self.live is not None:
            jobs.insert(1, Job("evaluate", spec.evaluate_every, self._evaluate))
        if self.config.drift is not None:
            jobs.append(Job("drift", self.config.drift.every, self._drift))
        if spec.backup_every is not None:
            directory, keep = self._beside_config(spec.backup_dir), spec.backup_keep
            jobs.append(Job("backup", spec.backup_every,
                            lambda: backup_in_turn(store, directory, keep, self.now())))
        retention = spec.retention
        if retention.payload_older_than is not None:
            age = retention.payload_older_than
            archive = (self._beside_config(retention.archive_dir)
                       if retention.archive_dir else None)
            jobs.append(Job("retention", spec.retention_every,
                            lambda: apply_retention(store, age, archive, self.now())))
        return jobs

    def _compare(self) -> None:
        assert self.store is not None and self.comparator is not None
        summary = ReplaySummary()
        compare(self.store, self.comparator, summary, now=self.now)
        if self.runtime is not None:
            self.runtime.compare_finished(self.comparator.name, summary.deferred)

    def _drift(self) -> None:
        """Measure drift, publish it as metrics, and pause the rollout when asked to."""
        from shadow.reports.build import measure_configured_drift
        from shadow.reports.drift import drift_metrics

        assert self.store is not None and self.config.drift is not None
        drift = measure_configured_drift(self.store, self.config, now=self.now)
        if drift is None:
            return
        if self.runtime is not None:
            self.runtime.set_drift(drift_metrics(drift))
        if drift.drifted:
            log.warning("drift detected", reasons=drift.reasons)
            if self.config.drift.pause_rollout and self.controller is not None:
                self.controller.hold("drift: " + "; ".join(drift.reasons), drift.as_dict())

    def _evaluate(self) -> None:
        assert self.live is not None
        self.live.publish_pending()
        self.live.evaluate(force=True)

    def _job_result(self, name: str, ok: bool) -> None:
        if self.runtime is not None:
            self.runtime.job_finished(name, ok)

    # -- the pipeline thread --------------------------------------------------------

    def _loop(self, feeds: list[Any]) -> None:
        assert self.pipeline is not None
        idle_s = self.config.daemon.poll_timeout_s
        while not self._stop.is_set():
            read = self.pipeline.pump(feeds)
            self._record_intake()
            self._run_tasks()
            if not read:
                self._wake.wait(idle_s)
                self._wake.clear()

    def _shut_down(self, feeds: list[Any]) -> None:
        """Store what webhooks already accepted, publish, and let the rest be re-read."""
        assert self.pipeline is not None
        deadline = self.now() + self.config.daemon.shutdown_deadline
        accepted = [(s, p) for s, p in feeds if isinstance(s, WebhookSource)]
        while accepted and not all(s.exhausted for s, _ in accepted) and self.now() < deadline:
            self.pipeline.pump(accepted)
        if self.live is not None:
            self.live.publish_pending()
        self._run_tasks()
        self._refuse_tasks()

    def _record_intake(self) -> None:
        if self.runtime is None:
            return
        self.runtime.set_sources(self.source_statuses())
        if self.pipeline is not None:
            summary = self.pipeline.summary
            self.runtime.set_skipped("event", summary.events_skipped)
            self.runtime.set_skipped("outcome", summary.outcomes_skipped)
        for source in self._sources:
            lag = getattr(source, "lag", None)
            if callable(lag):
                try:
                    self.runtime.set_lags(source.name, lag())
                except Exception as exc:  # noqa: BLE001 - lag is informational
                    log.debug("no consumer lag", source=source.name, error=str(exc))

    def call(self, function: Callable[[], Any], timeout_s: float = _CALL_TIMEOUT_S) -> Any:
        """Run ``function`` on the pipeline thread, wait for it and return its result."""
        if threading.current_thread() is self._thread:
            return function()
        if self._stop.is_set() and not self._ready:
            raise StoreError("the daemon is shutting down")
        future: Future[Any] = Future()
        self._tasks.put((function, future))
        self._wake.set()
        return future.result(timeout=timeout_s)

    def _run_tasks(self) -> None:
        while True:
            try:
                function, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def _refuse_tasks(self) -> None:
        while True:
            try:
                _, future = self._tasks.get_nowait()
            except queue.Empty:
                return
            future.set_exception(StoreError("the daemon is shutting down"))

    # -- Control --------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {"status": "alive", "pid": os.getpid(), "started_at": self._started_at.isoformat()}

    def source_statuses(self) -> list[SourceStatus]:
        """Every source, up or away (webhook endpoints are up while the daemon runs)."""
        return [s.status() if isinstance(s, GuardedSource) else SourceStatus(s.name, True)
                for s in self._sources]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while running and at least one source is up: a source that is away is
        reported, not a reason to turn away the deliveries the others can take."""
        reasons = []
        if not self._ready:
            reasons.append("starting" if not self._stop.is_set() else "shutting down")
        statuses = self.source_statuses()
        away = [s for s in statuses if not s.up]
        if statuses and len(away) == len(statuses):
            reasons.append("every source is away")
        return not reasons, {
            "ready": not reasons, "reasons": reasons,
            "sources": [s.as_dict() for s in statuses], "away": [s.name for s in away],
            "webhooks": self.webhooks.url if self.webhooks is not None else None,
            "workers": self.workers_heard()}

    def workers_heard(self) -> list[dict[str, str]]:
        """The candidate workers this recorder has stored records from, the latest first."""
        heard = dict(self.pipeline.workers_heard) if self.pipeline is not None else {}
        return [{"name": name, "last_heard": at.isoformat()}
                for name, at in sorted(heard.items(), key=lambda item: item[1], reverse=True)]

    def rollout_status(self) -> dict[str, Any]:
        def status() -> dict[str, Any]:
            from rollout import audit
            from rollout.views import status_view

            controller = self._controller()
            assessment = controller.assess()
            recent = audit.history(controller.store, controller.rollout, limit=1)
            return status_view(controller, assessment,
                               audit.latest_evaluations(controller.store, controller.rollout),
                               recent[0].as_dict() if recent else None)
        return dict(self.call(status))

    def rollout_history(self, limit: int | None) -> list[dict[str, Any]]:
        from rollout import audit

        def history() -> list[dict[str, Any]]:
            controller = self._controller()
            return [r.as_dict() for r in audit.history(controller.store, controller.rollout,
                                                       limit=limit)]
        return list(self.call(history))

    def rollout_command(self, action: str, *, actor: str, reason: str, token: str,
                        full: bool = False, force: bool = False) -> dict[str, Any]:
        from rollout.controller import FORCE_FIELD
        from rollout.state import Action
        from rollout.views import describe

        try:
            chosen = Action(action)
        except ValueError:
            raise ConfigError(f"unknown rollout action {action!r}") from None

        def command() -> dict[str, Any]:
            controller = self._controller()
            to_step = controller.plan.last if full else None
            t = controller.command(chosen, actor=actor, reason=reason, to_step=to_step,
                                   force=force, token=token, forcing=FORCE_FIELD)
            s = t.after
            return {"transition": describe(t),
                    "state": {"step": s.step, "percent": s.percent, "status": s.status.value}}
        return dict(self.call(command))

    def report(self, fmt: str) -> str:
        from shadow.reports.build import FORMATS, full_report, render_report

        if fmt not in FORMATS:
            raise ConfigError(f"format: expected one of {list(FORMATS)}, got {fmt!r}")
        assert self.store is not None
        store = self.store
        report = self.call(lambda: full_report(store, self.config, now=self.now))
        return render_report(report, fmt)

    def dead_letters(self, limit: int) -> list[dict[str, Any]]:
        from shadow.reports.summary import recent_dead_letters
        from shadow.reports.values import as_json

        assert self.store is not None
        store = self.store
        rows: list[dict[str, Any]] = as_json(
            self.call(lambda: recent_dead_letters(store, limit=limit)))
        return rows

    def event(self, event_id: str, candidate: str | None) -> dict[str, Any]:
        from shadow.reports.event_view import event_view
        from shadow.reports.values import as_json

        assert self.store is not None
        store, redact = self.store, self.config.report.redact
        view = self.call(lambda: event_view(store.db, event_id, candidate, redact=redact))
        return dict(as_json(view))

    def metrics(self) -> str:
        from shadow.service.metrics import render_metrics

        assert self.store is not None
        store = self.store
        return str(self.call(lambda: render_metrics(store, runtime=self.runtime)))

    def reviews(self, limit: int) -> list[dict[str, Any]]:
        from shadow.store.verdicts import open_reviews

        assert self.store is not None
        store = self.store
        return [{**asdict(r), "proposed_at": r.proposed_at.isoformat(),
                 "published_at": _iso(r.published_at)}
                for r in self.call(lambda: open_reviews(store, limit=limit))]

    def review_verdict(self, review_id: str, *, verdict: str, output: Any,
                       reviewer: str | None, token: str) -> dict[str, Any]:
        from shadow.store.verdicts import Verdict, decide, stored_verdict

        assert self.store is not None
        store = self.store
        given = (reviewer or "").strip() or token

        def store_and_publish() -> Any:
            now = self.now()
            found = decide(store, Verdict(review_id, verdict, output, given, now,
                                          f"api:{token}", None), received_at=now)
            if self.live is None:
                return found
            self.live.publish_pending()  # an approve or edit goes out now, not at the next batch
            return stored_verdict(store, review_id)

        found = self.call(store_and_publish)
        log.info("review verdict", caller=token, review_id=review_id, verdict=found.verdict,
                 reviewer=found.reviewer)
        return {**asdict(found), "decided_at": found.decided_at.isoformat(),
                "published_at": _iso(found.published_at)}

    def backup(self, name: str, *, token: str) -> dict[str, Any]:
        from shadow.store.backup import backup_named, check_name

        assert self.store is not None
        store = self.store
        directory = self._beside_config(self.config.daemon.jobs.backup_dir)
        check_name(name, str(directory))  # refused before intake is made to wait
        log.info("backup requested", caller=token, name=name, directory=str(directory))
        # On the pipeline thread, so the copy is of one moment: intake waits meanwhile.
        copy = self.call(lambda: backup_named(store, directory, name, now=self.now),
                         timeout_s=_BACKUP_TIMEOUT_S)
        return dict(copy.as_dict())

    def _controller(self) -> Any:
        if self.controller is None:
            raise ConfigError("rollout: this daemon's configuration has no 'rollout' section")
        self.controller.sync()
        return self.controller


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` (a clean shutdown), logged with the signal's name."""
    def handler(signum: int, frame: object) -> None:
        log.info("shutting down", signal=signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def store_to_run(config: Config, *, db: Path | None, base_dir: Path,
                 role: DaemonRole = DaemonRole.ALL) -> Path:
    """The store ``shadow run`` runs: ``--db``, else ``store.path``; checked with the rest.

    Raises:
        ConfigError: anything :func:`startup_problems` finds, all of it at once.
    """
    store = db if db is not None else (Path(config.store.path) if config.store.path else None)
    refuse(startup_problems(config, store_path=store, base_dir=base_dir, role=role))
    assert store is not None
    return store


def startup_problems(config: Config, *, store_path: Path | None, base_dir: Path,
                     environ: Mapping[str, str] = os.environ,
                     role: DaemonRole = DaemonRole.ALL) -> list[str]:
    """Everything missing for ``config`` to run as a daemon, one line each naming its key.

    Checked before any file is made: the store, the control API's tokens, the candidates
    (loaded, not opened), an event source, and each webhook's secret. What only shows
    when something starts (a port taken, a broker away) is not known here.
    """
    problems = []
    if store_path is None:
        problems.append("store.path: the daemon needs a store; set store.path in the config, "
                        "or give --db PATH (or set SHADOW_DB)")
    elif not store_path.parent.is_dir():
        problems.append(f"store.path: the folder {store_path.parent} does not exist")
    problems.extend(_token_problems(config, base_dir=base_dir, environ=environ))
    specs = config.all_candidates()
    if not specs:
        problems.append("candidate: the daemon needs a candidate to run")
    for i, spec in enumerate(specs):
        try:
            build_candidate(spec)
        except ConfigError as exc:
            where = "candidate" if config.candidate is not None else f"candidates.{i}"
            problems.append(f"{where}: {exc}")
    if role is DaemonRole.RECORDER:
        problems.extend(recorder_problems(config))
    elif not config.sources.events:
        problems.append("sources.events: the daemon needs at least one event source")
    problems.extend(f"sources.verdicts.{i}: verdicts come from a file, Kafka or a webhook, "
                    f"not {source.kind}" for i, source in enumerate(config.sources.verdicts)
                    if source.kind not in ("file", "kafka", "webhook"))
    for side in ("events", "outcomes", "verdicts"):
        for i, source in enumerate(getattr(config.sources, side)):
            if isinstance(source, WebhookSourceSpec):
                problem = _webhook_problem(source, environ)
                if problem is not None:
                    problems.append(f"sources.{side}.{i}.secret_env: {problem}")
    return problems


def recorder_problems(config: Config) -> list[str]:
    """What a recorder (and its workers) need besides what every daemon needs."""
    problems = []
    if config.workers is None:
        problems.append("workers: a recorder reads what candidate workers hand over; set "
                        "workers.bootstrap (and workers.topic)")
    if config.rollout is not None and config.rollout.state_topic is None:
        problems.append("rollout.state_topic: candidate workers route by the rollout's state, "
                        "which the recorder publishes there; set rollout.state_topic")
    return problems


def refuse(problems: list[str]) -> None:
    """Raise one :class:`ConfigError` listing every problem, if there are any.

    Raises:
        ConfigError: one problem on one line; several under a line saying how many.
    """
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"the daemon cannot start, {len(problems)} problems:\n  "
                          + "\n  ".join(problems))


def _token_problems(config: Config, *, base_dir: Path,
                    environ: Mapping[str, str]) -> list[str]:
    """Every token variable that is not set; else whatever reading the tokens finds."""
    api = config.daemon.api
    unset = [f"daemon.api.tokens.{i}.env: set the environment variable {token.env} to the "
             f"token of {token.name!r}"
             for i, token in enumerate(api.tokens) if not environ.get(token.env, "").strip()]
    if unset:
        return unset
    try:
        load_tokens(api, base_dir=base_dir, environ=environ)
    except ConfigError as exc:
        return [str(exc)]
    return []


def _webhook_problem(spec: WebhookSourceSpec, environ: Mapping[str, str]) -> str | None:
    if spec.secret_env is None:
        return None
    secret = environ.get(spec.secret_env)
    if not secret:
        return (f"set the environment variable {spec.secret_env} to the signing secret of "
                f"webhook {spec.name!r}")
    try:
        verifier(spec.scheme, secret)
    except ValueError as exc:
        return f"{spec.secret_env} does not hold a {spec.scheme} secret: {exc}"
    return None


class _NewFiles:
    """The store's files that do not exist yet, to remove when a start is refused.

    Only files this start made are removed: a store that was there before is never touched.
    """

    def __init__(self, store: Path) -> None:
        names = [store, store.with_name(store.name + ".wal"), DaemonLock(store).path,
                 DaemonFile.path_for(store)]
        self.paths = [path for path in names if not path.exists()]

    def remove(self) -> None:
        for path in self.paths:
            path.unlink(missing_ok=True)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _guarded(source: Source) -> Source:
    """Webhook endpoints only hand out what they received; every other source is guarded."""
    return source if isinstance(source, WebhookSource) else GuardedSource(source)


def _raise_open_files_limit() -> None:
    """Let the process open as many files as its hard limit allows.

    The common soft limit of 1,024 is what a thousand slow webhook senders exhaust, and
    with it the store, the API and every source; the hard limit is usually far higher
    and any process may raise its soft limit up to it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:  # a container may forbid it; run with what is
            log.warning("open files limit not raised", soft=soft, hard=hard, error=str(exc))
        else:
            log.info("open files limit raised", soft=wanted, was=soft)
