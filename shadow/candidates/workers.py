"""Worker processes for a CPU-bound Python candidate: every core, each event predicted once.

A :class:`WorkerPool` runs an in-process candidate (a callable candidate with ``workers: 1``)
in N processes. The pool is started once, when the candidate opens, and stopped when it
closes. ``predict`` splits the events into tasks of up to 256 events, keeps two tasks with
each worker (one running, the next waiting in the worker) and gathers the answers back in
event order; the caller (the pipeline's one writer) stores them.

How events and answers travel (measured, see docs/performance.md, "CPU-bound candidates
in worker processes"): events as one orjson document per task, validated back into
``Event`` models in the worker by one pydantic call (pickle where orjson cannot encode a
payload, integers beyond 64 bits say); answers as pickled tuples (output, confidence,
abstained, latency, error), so an output reaches checks and the store as the very value
the candidate returned, and the parent builds each ``Prediction`` itself. Arrow IPC cost
the parent more per event than orjson: payloads are free-form JSON, so each one has to be
encoded as text for its column anyway.

Processes are started with the ``spawn`` method: the daemon has threads (the control API,
webhook servers, Kafka's), and a forked child would inherit their locks in whatever state
they were, so ``fork`` is out. ``forkserver`` would restart a crashed worker faster, but
keeps a server process for the parent's whole life, shared with every other user of
multiprocessing in it, and takes ``sys.path`` as it was when that server started; spawn
starts each worker from the parent's current ``sys.path`` and leaves nothing running after
:meth:`WorkerPool.close`. Its start-up (an interpreter, the candidate's imports) is paid
once per worker, at open. Like every spawned process, a worker imports the parent's main
module under another name, so a program that runs the pipeline itself must guard its top
level with ``if __name__ == "__main__":`` (the ``shadow`` command has nothing to guard).

A worker that dies (killed, out of memory, a crash in a C extension) is replaced and its
task is run again; its answers are taken at most once, so every event gets exactly one
prediction. A task that kills its worker twice is halved and each half tried once more,
down to one event (one batch for a batch callable), which then gets an error prediction
(``WorkerDied``) instead of being tried forever. An exception inside the candidate never
reaches this module: the in-process candidate has already made it a per-event error.
"""

from __future__ import annotations

import enum
import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import TypeAdapter

from shadow.core.errors import ConfigError, ShadowError
from shadow.core.models import ErrorKind, Event, Mode, Prediction, PredictionError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from shadow.candidates.base import Candidate

MAX_WORKERS = 64
MAX_ATTEMPTS = 2
"""Runs of one task before it is halved (or, at one unit, given up as ``WorkerDied``)."""
TASK_EVENTS = 256
"""Events per task at most: small enough that no worker waits long for the last one."""
TASKS_PER_WORKER = 4
IN_FLIGHT = 2
"""Tasks handed to a worker at once: the next one waits in the worker while it runs one,
so a worker never idles waiting for the parent to be scheduled (a busy machine's delay)."""
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0

_STOP = b""
Row = tuple[Any, float | None, bool, float, PredictionError | None]
"""What a worker sends back per event: output, confidence, abstained, latency, error."""


class PoolState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class WorkerStartError(ShadowError):
    """A worker process could not load the candidate, or did not start in time."""


@dataclass(slots=True)
class _Task:
    start: int
    stop: int
    attempts: int = 0


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False
    tasks: list[_Task] = field(default_factory=list)
    """Handed to it and not answered yet, oldest (the one it runs) first."""


class WorkerPool:
    """N processes running one in-process candidate; see the module docstring.

    ``unit`` is how many events the candidate must see together (a batch callable's
    ``batch_size``; 1 for a per-event one): tasks are whole units, so a batch callable
    is called with the same lists as in one process.
    """

    def __init__(self, candidate: Candidate, *, workers: int, unit: int = 1) -> None:
        if not 2 <= workers <= MAX_WORKERS:
            raise ConfigError(f"workers: expected 2 to {MAX_WORKERS} for a pool, got {workers}")
        self.workers = workers
        self.unit = max(1, unit)
        self.name, self.version = candidate.name, candidate.version
        try:
            self._candidate = pickle.dumps(candidate, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # any pickling failure says the same
            raise ConfigError(
                f"workers: the candidate {candidate.name!r} cannot be sent to a worker "
                f"process ({exc}); it must be a function importable by module and name"
            ) from exc
        self.state = PoolState.NEW
        self.restarts = 0
        """Workers replaced after dying, over the pool's life."""
        self._pool: list[_Worker] = []
        self._lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids, in worker order (a test kills one)."""
        return [w.process.pid or 0 for w in self._pool]

    def open(self) -> None:
        """Start the workers and wait until each has loaded the candidate.

        Raises:
            WorkerStartError: a worker could not load it (the message says why).
        """
        if self.state is not PoolState.NEW:
            raise RuntimeError(f"cannot open a worker pool that is {self.state.value}")
        self.state = PoolState.OPEN
        try:
            self._pool = [self._start() for _ in range(self.workers)]
            for worker in self._pool:
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every worker: asked first, killed after ``STOP_TIMEOUT_S``. Idempotent."""
        if self.state is PoolState.CLOSED:
            return
        self.state = PoolState.CLOSED
        for worker in self._pool:
            try:
                worker.conn.send_bytes(_STOP)
            except OSError:
                pass  # already gone
        for worker in self._pool:
            worker.process.join(STOP_TIMEOUT_S)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._pool = []

    def predict(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        """One prediction per event, in order, made by the workers."""
        if self.state is not PoolState.OPEN:
            raise RuntimeError(f"the worker pool is {self.state.value}: open it before predict")
        if not events:
            return []
        with self._lock:
            return self._run(events, now)

    # -- the parent's loop ----------------------------------------------------------

    def _run(self, events: Sequence[Event], now: datetime) -> list[Prediction]:
        pending = deque(self._tasks(len(events)))
        done: dict[int, list[Row]] = {}
        made: dict[int, list[Prediction]] = {}
        while pending or any(w.tasks for w in self._pool):
            for worker in self._pool:
                while worker.ready and len(worker.tasks) < IN_FLIGHT and pending:
                    self._send(worker, pending.popleft(), events, now, pending)
            # The answers in so far become predictions while the workers run the rest.
            self._make(events, now, done, made)
            waiting = [w for w in self._pool if w.tasks or not w.ready]
            ready = set(wait([w.conn for w in waiting] + [w.process.sentinel for w in waiting]))
            for worker in waiting:
                if worker.conn in ready:
                    self._receive(worker, done, pending)
                elif worker.process.sentinel in ready:
                    self._lost(worker, done, pending)
        self._make(events, now, done, made)
        predictions = [p for start in sorted(made) for p in made[start]]
        if len(predictions) != len(events):  # the bookkeeping above guarantees it
            raise AssertionError(
                f"worker pool returned {len(predictions)} predictions for {len(events)} events")
        return predictions

    def _make(self, events: Sequence[Event], now: datetime, done: dict[int, list[Row]],
              made: dict[int, list[Prediction]]) -> None:
        """The predictions of the tasks answered and not made yet, by the task's start."""
        for start in done.keys() - made.keys():
            rows = done[start]
            made[start] = [self._prediction(event, row, now) for event, row
                           in zip(events[start : start + len(rows)], rows, strict=True)]

    def _tasks(self, count: int) -> list[_Task]:
        units = -(-count // self.unit)
        wanted = -(-units // (self.workers * TASKS_PER_WORKER))
        per_task = max(1, min(TASK_EVENTS // self.unit, wanted))
        step = per_task * self.unit
        return [_Task(start, min(start + step, count)) for start in range(0, count, step)]

    def _send(self, worker: _Worker, task: _Task, events: Sequence[Event], now: datetime,
              pending: deque[_Task]) -> None:
        message = pickle.dumps((task.start, now, *encode_events(events[task.start : task.stop])),
                               protocol=pickle.HIGHEST_PROTOCOL)
        try:
            worker.conn.send_bytes(message)
        except OSError:
            pending.appendleft(task)  # never delivered: not an attempt
            self._replace(worker)
            return
        task.attempts += 1
        worker.tasks.append(task)

    def _receive(self, worker: _Worker, done: dict[int, list[Row]], pending: deque[_Task]) -> None:
        try:
            message = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            self._lost(worker, done, pending)
            return
        self._accept(worker, message, done)

    def _accept(self, worker: _Worker, message: tuple[Any, ...],
                done: dict[int, list[Row]]) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "rows" and worker.tasks and message[1] == worker.tasks[0].start:
            # At most once: a task's answers are taken from the worker that holds it.
            done.setdefault(message[1], message[2])
            worker.tasks.pop(0)
        elif kind == "failed":
            raise WorkerStartError(f"a worker process of candidate {self.name!r} failed: "
                                   f"{message[1]}")

    def _lost(self, worker: _Worker, done: dict[int, list[Row]], pending: deque[_Task]) -> None:
        """The worker died: take what it sent before, then re-run, halve or give up its task."""
        while True:
            try:
                if not worker.conn.poll():
                    break
                self._accept(worker, pickle.loads(worker.conn.recv_bytes()), done)
            except (EOFError, OSError):
                break
        tasks, worker.tasks = worker.tasks, []
        if not worker.ready:
            raise WorkerStartError(
                f"a worker process of candidate {self.name!r} died while starting "
                f"(exit code {worker.process.exitcode}); see its output above")
        code = worker.process.exitcode
        self._replace(worker)
        if not tasks:
            return
        task, waited = tasks[0], tasks[1:]
        for later in reversed(waited):  # never started: not an attempt
            later.attempts -= 1
            pending.appendleft(later)
        if task.attempts < MAX_ATTEMPTS:
            pending.appendleft(task)
        elif task.stop - task.start > self.unit:
            units = -(-(task.stop - task.start) // self.unit)
            middle = task.start + (units // 2) * self.unit
            pending.extendleft([_Task(middle, task.stop, MAX_ATTEMPTS - 1),
                                _Task(task.start, middle, MAX_ATTEMPTS - 1)])
        else:
            error = PredictionError(
                type="WorkerDied", kind=ErrorKind.EXCEPTION,
                message=f"the worker process running the candidate died on this "
                        f"{'event' if self.unit == 1 else 'batch'} {MAX_ATTEMPTS} times "
                        f"(last exit code {code})")
            done[task.start] = [(None, None, False, 0.0, error)] * (task.stop - task.start)

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
        fresh = self._start()
        worker.process, worker.conn, worker.ready, worker.tasks = (
            fresh.process, fresh.conn, False, [])
        self.restarts += 1

    def _start(self) -> _Worker:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(target=serve, args=(child, self._candidate),
                                  name=f"shadow-worker:{self.name}", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def _await_ready(self, worker: _Worker) -> None:
        ready = wait([worker.conn, worker.process.sentinel], timeout=START_TIMEOUT_S)
        if worker.conn in ready:
            try:
                self._accept(worker, pickle.loads(worker.conn.recv_bytes()), {})
            except (EOFError, OSError):
                pass
        if not worker.ready:
            raise WorkerStartError(
                f"a worker process of candidate {self.name!r} did not start "
                f"(exit code {worker.process.exitcode}); see its output above")

    def _prediction(self, event: Event, row: Row, now: datetime) -> Prediction:
        output, confidence, abstained, latency, error = row
        return Prediction(
            event_id=event.event_id, candidate=self.name, version=self.version,
            mode=Mode.SHADOW, output=output, confidence=confidence, abstained=abstained,
            latency_ms=latency, error=error, predicted_at=now,
        )


# -- both sides of the pipe ------------------------------------------------------------


def encode_events(events: Sequence[Event]) -> tuple[str, bytes]:
    """Events as a task carries them: ``("json", orjson text)``, or ``("pickle", …)``.

    A field the event was given without (``routing_key``, say) is left out, so the event
    validated back has the same ``model_fields_set`` as in the parent.
    """
    every = len(Event.model_fields)
    try:
        return "json", orjson.dumps([
            {"event_id": e.event_id, "key": e.key, "occurred_at": e.occurred_at,
             "segment": e.segment, "payload": e.payload, "routing_key": e.routing_key}
            if len(given := e.model_fields_set) == every else
            {"event_id": e.event_id, "key": e.key, "occurred_at": e.occurred_at,
             "segment": e.segment, "payload": e.payload}
            if len(given) == every - 1 and "routing_key" not in given else
            {name: getattr(e, name) for name in Event.model_fields if name in given}
            for e in events])
    except TypeError:  # orjson.JSONEncodeError: what JSON text cannot carry, pickle can
        return "pickle", pickle.dumps(list(events), protocol=pickle.HIGHEST_PROTOCOL)


@cache
def _event_list() -> TypeAdapter[list[Event]]:
    return TypeAdapter(list[Event])


def decode_events(encoding: str, data: bytes) -> list[Event]:
    """The events :func:`encode_events` encoded, validated again into models."""
    if encoding == "json":
        return _event_list().validate_json(data)
    events: list[Event] = pickle.loads(data)
    return events


def _reply(start: int, predictions: list[Prediction]) -> bytes:
    rows = [(p.output, p.confidence, p.abstained, p.latency_ms, p.error) for p in predictions]
    try:
        return pickle.dumps(("rows", start, rows), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - an output pickle cannot carry goes back as its JSON
        plain = [(orjson.loads(orjson.dumps(o)) if e is None else None, c, a, t, e)
                 for o, c, a, t, e in rows]
        return pickle.dumps(("rows", start, plain), protocol=pickle.HIGHEST_PROTOCOL)


def serve(conn: Connection, candidate_bytes: bytes) -> None:
    """A worker's life: load the candidate, then predict each task until told to stop.

    A thread reads the tasks as they come, so the parent's send never waits for this
    worker to finish a task (and the two never wait for each other). It ignores SIGINT:
    Ctrl-C reaches the whole process group, and the parent decides when its workers stop.
    It also stops when the parent is gone (end of file).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        candidate: Candidate = pickle.loads(candidate_bytes)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        return
    _event_list()  # built now, so the first task does not pay for it
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    threading.Thread(target=_read, args=(conn, inbox), name="shadow-worker-inbox",
                     daemon=True).start()
    while (message := inbox.get()) != _STOP:
        start, now, encoding, data = pickle.loads(message)
        conn.send_bytes(_reply(start, candidate.predict(decode_events(encoding, data), now)))


def _read(conn: Connection, inbox: queue.SimpleQueue[bytes]) -> None:
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            message = _STOP
        inbox.put(message)
        if message == _STOP:
            return
