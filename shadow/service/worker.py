"""``shadow worker``: a candidate worker as a process, until SIGTERM or SIGINT.

It reads the configuration's event sources (Kafka topics) in their consumer groups,
calls the candidates, routes by the rollout's state on ``rollout.state_topic``,
publishes live decisions and hands everything over on ``workers.topic``
(:mod:`shadow.pipeline.worker`). Any number may run, on any machines: Kafka shares the
partitions among them and moves a stopped worker's to the others.

With ``--metrics HOST:PORT`` it serves Prometheus metrics: records, predictions and
errors by candidate, live decisions published and held, the lag of each partition it
holds, and the age of the rollout state it routes by.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from connectors.base import Source
from connectors.mapping import EventMapper
from rollout.runtime import build_sink, rolled_out
from rollout.tiers import Policy
from shadow.candidates import Candidate, build_candidate
from shadow.config.file import Config
from shadow.core.errors import ConfigError, SinkError
from shadow.pipeline.handoff import worker_name
from shadow.pipeline.source_guard import GuardedSource
from shadow.pipeline.worker import RolloutRoute, Stopped, Worker
from shadow.service.daemon import refuse, stop_on_signals
from shadow.service.metric_families import counter, gauge, labelled

log = structlog.get_logger(__name__)

_POLL_S = 0.05
_IDLE_S = 0.05
_TOPIC_RETRY_S = 2.0
_HEAR_AT_START_S = 5.0


def worker_problems(config: Config) -> list[str]:
    """Everything missing for ``config`` to run as a candidate worker, one line each."""
    problems = []
    if config.workers is None:
        problems.append("workers: a worker hands its predictions over on a topic; set "
                        "workers.bootstrap (and workers.topic)")
    if not config.all_candidates():
        problems.append("candidate: a worker needs a candidate to call")
    if not config.sources.events:
        problems.append("sources.events: a worker needs at least one Kafka event source")
    problems.extend(f"sources.events.{i}: a worker reads Kafka topics in a consumer group, "
                    f"not a {spec.kind} source" for i, spec in enumerate(config.sources.events)
                    if spec.kind != "kafka")
    if config.rollout is not None and config.rollout.state_topic is None:
        problems.append("rollout.state_topic: a worker routes by the rollout's state, which "
                        "the recorder publishes there; set rollout.state_topic")
    return problems


class WorkerProcess:
    """One candidate worker, wired from a configuration."""

    def __init__(self, config: Config, *, base_dir: Path, name: str | None = None,
                 metrics: tuple[str, int] | None = None, batch_size: int = 500) -> None:
        self.config, self.base_dir, self.metrics = config, base_dir, metrics
        self.name = name or worker_name()
        self.batch_size = batch_size
        self.stopping = threading.Event()
        self.worker: Worker | None = None
        self._kafka: list[Any] = []
        self.lag: dict[str, int] = {}
        """The lag of each partition held, as last read between two batches."""
        self.metrics_url: str | None = None

    def run(self) -> int:
        """Work until told to stop; returns 0.

        Raises:
            ConfigError: the configuration cannot run as a worker.
        """
        refuse(worker_problems(self.config))
        config = self.config
        spec = config.workers
        assert spec is not None
        from connectors.compacted import ensure_topic
        from connectors.kafka import KafkaSource, Start, TopicWriter

        with ExitStack() as stack:
            candidates: list[Candidate] = []
            for candidate_spec in config.all_candidates():
                candidates.append(stack.enter_context(build_candidate(candidate_spec)))
            stop_on_signals(self.stop)
            while not self.stopping.is_set():
                try:
                    ensure_topic(spec.bootstrap, spec.topic, partitions=spec.partitions)
                    break
                except SinkError as exc:
                    log.warning("workers' topic not reachable; trying again", error=str(exc),
                                retry_in_s=_TOPIC_RETRY_S)
                    self.stopping.wait(_TOPIC_RETRY_S)
            writer = stack.enter_context(TopicWriter(
                bootstrap=spec.bootstrap, topic=spec.topic, options=spec.options))
            sources: list[Source] = []
            for source_spec in config.sources.events:
                assert source_spec.kind == "kafka"
                inner = KafkaSource(bootstrap=source_spec.bootstrap, topics=source_spec.topics,
                                    group_id=source_spec.group, start=Start(source_spec.start),
                                    poll_timeout_s=_POLL_S, options=source_spec.options)
                self._kafka.append(inner)
                sources.append(stack.enter_context(GuardedSource(inner)))
            self.worker = Worker(sources, candidates, writer, name=self.name,
                                 event_mapper=EventMapper(config.mapping.events),
                                 route=self._route(candidates, stack),
                                 batch_size=self.batch_size, stopping=self.stopping)
            if self.metrics is not None:
                self._serve_metrics(*self.metrics)
            log.info("worker started", worker=self.name, topic=spec.topic,
                     sources=[s.name for s in sources], metrics=self.metrics_url)
            self._loop(self.worker)
        log.info("worker stopped", worker=self.name, **_counts(self.worker))
        return 0

    def stop(self) -> None:
        self.stopping.set()

    def _route(self, candidates: list[Candidate], stack: ExitStack) -> RolloutRoute | None:
        plan = self.config.rollout
        if plan is None or plan.sink is None:
            return None  # nothing is ever live: every prediction is a shadow one
        assert plan.state_topic is not None
        from rollout.state_topic import StateFollower

        candidate = rolled_out(plan, candidates)
        follower = stack.enter_context(StateFollower.from_spec(plan.state_topic))
        sink = stack.enter_context(build_sink(plan.sink))
        route = RolloutRoute(plan=plan, rollout=plan.name or candidate.name,
                             candidate=candidate.name, version=candidate.version,
                             follower=follower, sink=sink, policy=Policy(plan.tiers))
        # What a new worker reads at start is history: until the recorder is heard, every
        # prediction would go to shadow. It is heard within a heartbeat when it is there.
        wait_s = max(_HEAR_AT_START_S, 3 * plan.state_topic.max_age.total_seconds())
        deadline = time.monotonic() + wait_s
        while (follower.age(route.rollout) is None and time.monotonic() < deadline
               and not self.stopping.wait(0.05)):
            pass
        if follower.age(route.rollout) is None:
            log.warning("rollout state not heard; routing to shadow until it is",
                        rollout=route.rollout, topic=plan.state_topic.topic, waited_s=wait_s)
        return route

    def _loop(self, worker: Worker) -> None:
        while not self.stopping.is_set():
            try:
                read = worker.step()
            except Stopped as exc:
                log.info("worker stopping", reason=str(exc))
                return
            self.lag = self._read_lag()
            if not read:
                self.stopping.wait(_IDLE_S)

    def _read_lag(self) -> dict[str, int]:
        """Read in the worker's thread (a consumer is not shared between threads)."""
        lag: dict[str, int] = {}
        for source in self._kafka:
            try:
                lag.update(source.lag())
            except Exception:  # noqa: BLE001 - a broker away: the lag is unknown for now
                continue
        return lag

    def _serve_metrics(self, host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        server, _ = start_http_server(port, addr=host, registry=registry)
        bound = server.server_address[1]
        self.metrics_url = f"http://{host}:{bound}/metrics"


class _Collector:
    def __init__(self, process: WorkerProcess) -> None:
        self.process = process

    def collect(self) -> Iterator[Metric]:
        worker = self.process.worker
        if worker is None:
            return
        c = worker.counts
        yield counter("shadow_worker_records", "Records read from the event sources.",
                      c.records)
        yield counter("shadow_worker_dead_letters", "Records that became dead letters.",
                      c.dead_letters)
        yield counter("shadow_worker_handed_over", "Messages the broker took on the "
                      "workers' topic.", c.handed_over)
        yield labelled(CounterMetricFamily, "shadow_worker_predictions",
                       "Candidate calls, by candidate.", ["candidate"],
                       [([name], float(n)) for name, n in c.calls.items()])
        yield counter("shadow_worker_prediction_errors", "Predictions that ended in an error.",
                      c.errors)
        yield counter("shadow_worker_live_published", "Live decisions this worker published "
                      "to the action sink.", c.published)
        yield counter("shadow_worker_live_held", "Predictions routed to shadow because the "
                      "rollout's state was not heard within max_age.", c.held)
        state = worker.state()
        yield gauge("shadow_worker_state_revision", "The revision of the rollout state this "
                    "worker routes by (NaN: none read yet, or no rollout).",
                    math.nan if state is None else state.revision)
        yield gauge("shadow_worker_live_allowed", "1 while this worker may publish live "
                    "decisions (the state heard within max_age), else 0.",
                    1.0 if worker.live_allowed() else 0.0)
        age = worker.state_age()
        yield gauge("shadow_worker_state_age_seconds", "Seconds since the rollout's state "
                    "was last heard (NaN: not heard since start, or no rollout).",
                    math.nan if age is None else age)
        yield labelled(GaugeMetricFamily, "shadow_worker_lag",
                       "Records each partition this worker holds has beyond what it read.",
                       ["partition"],
                       [([name], float(n)) for name, n in self.process.lag.items()])
        yield gauge("shadow_worker_up_since_seconds", "When this worker started (Unix time).",
                    _STARTED)


_STARTED = time.time()


def _counts(worker: Worker | None) -> dict[str, Any]:
    if worker is None:
        return {}
    c = worker.counts
    return {"records": c.records, "predictions": c.predictions, "errors": c.errors,
            "published": c.published, "held": c.held, "handed_over": c.handed_over}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT`` for 127.0.0.1).

    Raises:
        ConfigError: not of that form.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65_535:
        raise ConfigError(f"--metrics: expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)
