"""The serving metrics, recorded inside the gunicorn processes.

Every gunicorn process (master and workers) writes its figures with
prometheus_client's multiprocess mode into the run's directory
(PROMETHEUS_MULTIPROC_DIR, made fresh by PID 1 at every start); PID 1 merges
them at scrape time (multiproc.py) without importing prometheus_client.

  workers: request latency (until the body has been sent), the latency
           of each phase of an invocation (input, predict, output;
           `transform` for a transform_fn), requests in flight, the size of
           each batch and each batched request's wait for it (batching.py), model load
           seconds; requests by route (the route table's labels, serve/routes.py) and status code
           only without nginx: with nginx in front PID 1 counts them from its
           access log (metrics/responses.py), nginx's own answers included;
  master:  worker restarts and worker timeouts, seen when it reaps a worker
           (child_exit); it also folds the files of dead workers into
           archives there, so a scrape reads a bounded number of files
           however many workers have come and gone.

Nothing is recorded unless install() ran (PID 1 passes --metrics-dir to the
gunicorn master only when its endpoint listens).

The request path stays cheap. prometheus_client's multiprocess values check
getpid() and write their file under a lock on every inc() and observe(): the
eleven updates of one /invocations cost about 29 µs, a tenth of the whole
stack's CPU per request (bench/ figure 1). So a worker adds each request's
count and timings (its phases included, handed over in the WSGI environ) to
plain numbers under one lock (_Batch), and a thread of its own publishes them
at most PUBLISH_DELAY later, and the worker's exit hook publishes the rest.
Only requests in flight are written at once: that gauge is about right now.
It is written straight into its slot of the mmap (_LiveGauge), without
prometheus_client's lock and checks per update. The pending timings of every
route and phase have their slot made once (_Batch.slot), so recording a request
is a few additions to lists that already exist.
A worker killed with SIGKILL loses at most its last PUBLISH_DELAY of figures.
A full disk costs metrics, never requests: the files' room is reserved before
prometheus_client's mmap touches it (roomy_mmap.py).
getpid() is a system call, and prometheus_client makes one per update to
notice a fork: its values here ask _pid instead, which the fork hook keeps.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from ...serve import routes
from .. import multiproc
from ..responses import HELP as REQUESTS_HELP
# From a millisecond to the longest SAGEMAKER_MODEL_SERVER_TIMEOUT anyone uses.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   float("inf"))

# Requests per batch: SMSUPER_BATCH_SIZE is at most 256.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, float("inf"))

# Streams may last up to an hour (SMSUPER_STREAM_TIMEOUT, async's longest invocation).
STREAM_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))

# How late a worker's counts and timings may reach the scrape.
PUBLISH_DELAY = 0.2
# Where the app leaves an invocation's phase timings for the middleware to record.
PHASES_KEY = "smsuper.phase_seconds"

# This process's pid, kept by a fork hook: os.getpid() is a system call per metric update.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _current_pid() -> int:
    return _pid[0]


_state: Optional["_Metrics"] = None


class _Metrics:
    def __init__(self, directory: str, count_requests: bool = True):
        self.directory = directory
        # prometheus_client picks its value class when it is first imported: the
        # directory must be in the environment by then.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from prometheus_client import Counter, Gauge, Histogram, values

        from . import roomy_mmap

        # Read when each metric is made; the process_identifier is prometheus_client's own hook.
        values.ValueClass = values.MultiProcessValue(process_identifier=_current_pid)
        roomy_mmap.install()  # a full disk drops metrics instead of killing workers with SIGBUS

        # Counted by the workers only when no nginx answers in front of them (see responses.py).
        self.requests = Counter("smsuper_http_requests", REQUESTS_HELP, ["route", "code"]) if count_requests else None
        self.latency = Histogram("smsuper_http_request_duration_seconds", "Seconds a worker took to produce "
                                 "the response, by route.", ["route"], buckets=LATENCY_BUCKETS)
        self.phases = Histogram("smsuper_invocation_phase_duration_seconds", "Seconds of each phase of a "
                                "successful /invocations: input (input_fn), predict (predict_fn), output "
                                "(output_fn), or transform (transform_fn).", ["phase"], buckets=LATENCY_BUCKETS)
        self.in_flight = Gauge("smsuper_http_requests_in_flight", "Requests the workers are handling right now.",
                               multiprocess_mode="livesum")
        self.load_seconds = Gauge("smsuper_model_load_seconds", "Seconds the most recent model load took "
                                  "(model_fn, or importing and first probing SMSUPER_APP).",
                                  multiprocess_mode="mostrecent")
        self.restarts = Counter("smsuper_worker_restarts", "gunicorn workers that exited and were replaced "
                                "(max requests, crashes, timeouts).")
        self.timeouts = Counter("smsuper_worker_timeouts", "gunicorn workers killed because a request ran "
                                "past the worker timeout.")
        # Counted by the worker itself as it leaves: restarts minus recycles are the unplanned ones.
        self.recycles = Counter("smsuper_worker_recycles", "gunicorn workers that left on their own after "
                                "SMSUPER_MAX_REQUESTS requests (planned restarts).")
        # Streamed answers (serve/worker/streaming.py): few and long, so recorded at once.
        self.streams_in_flight = Gauge("smsuper_streams_in_flight", "Streamed answers being sent right now "
                                       "(until their last byte).", multiprocess_mode="livesum")
        self.stream_first_byte = Histogram("smsuper_stream_first_byte_seconds", "Seconds from a streamed "
                                           "request's arrival at a worker to its first chunk.", buckets=LATENCY_BUCKETS)
        self.stream_duration = Histogram("smsuper_stream_duration_seconds", "Seconds a streamed answer took, "
                                         "to its last chunk (or its end by failure or disconnect).",
                                         buckets=STREAM_BUCKETS)
        self.stream_chunks = Counter("smsuper_stream_chunks", "Chunks of streamed answers sent.")
        self.stream_bytes = Counter("smsuper_stream_bytes", "Bytes of streamed answers sent (without the "
                                    "chunked encoding's framing).")
        # Server-side batching (serve/worker/batching.py): recorded once per batch, by its dispatcher.
        self.batch_size = Histogram("smsuper_batch_size", "Requests predicted together in one call "
                                    "(SMSUPER_BATCH_SIZE > 1).", buckets=BATCH_SIZE_BUCKETS)
        self.batch_wait = Histogram("smsuper_batch_wait_seconds", "Seconds each batched request waited for "
                                    "its batch to be sent to the model (at most SMSUPER_BATCH_DELAY_MS).",
                                    buckets=LATENCY_BUCKETS)
        self.requests_in_flight = _LiveGauge(self.in_flight)
        self._counted: Dict[Tuple[str, str], Any] = {}
        # Bounded label values: the route table's labels, everything else is "other".
        self.labels = routes.labels()
        self.patterns = tuple(route for route in routes.TABLE if route.pattern is not None)
        self._timed = {label: self.latency.labels(label)
                       for label in (*(route.label for route in routes.TABLE), routes.OTHER)}
        self._phase = {}
        self.batch = _Batch(self)

    def label(self, path: str) -> str:
        """The `route` label of a request's path: a dict lookup for the exact paths."""
        label = self.labels.get(path)
        if label is None:
            route = routes.find(path, self.patterns) if self.patterns else None
            label = route.label if route is not None else routes.OTHER
        return label

    def count(self, route: str, code: str) -> Any:
        child = self._counted.get((route, code))
        if child is None:
            child = self._counted[(route, code)] = self.requests.labels(route, code)
        return child

    def phase(self, name: str) -> Any:
        child = self._phase.get(name)
        if child is None:
            child = self._phase[name] = self.phases.labels(name)
        return child


class _LiveGauge:
    """A gauge without labels written straight into its slot of the process's mmap.

    prometheus_client's inc() takes its lock, asks for the pid and looks the slot up by key on
    every update: twice per request for the requests in flight. This keeps the slot and asks
    prometheus_client's value (0.26.0, pinned) again only in a new process, where inc(0) makes
    it reopen this process's own file. Its value, file and key (_value, _file, _key) are
    prometheus_client's; the file is read at each write, as it may be remapped when it grows.
    """

    __slots__ = ("value", "lock", "pid", "file", "position", "pack")

    def __init__(self, gauge: Any):
        from prometheus_client.mmap_dict import _pack_two_doubles

        self.value = gauge._value
        self.lock = threading.Lock()  # gthread workers update it from several threads
        self.pid = 0
        self.file: Any = None
        self.position: Optional[int] = None
        self.pack = _pack_two_doubles

    def add(self, amount: float) -> None:
        value = self.value
        with self.lock:
            if self.pid != _pid[0] or value._file is not self.file:
                # A new process (or another metric's update made prometheus_client notice it
                # first): inc(0) makes it open this process's file and the slot.
                value.inc(0)
                self.file = value._file
                # None: no room for the file or the slot (roomy_mmap.py): nothing is written.
                self.position = getattr(self.file, "_positions", {}).get(value._key)
                self.pid = _pid[0]
            value._value += amount
            if self.position is not None:
                self.pack(self.file._m, self.position, value._value, 0.0)


class _Batch:
    """Counts and timings recorded since they were last published, as plain numbers."""

    def __init__(self, metrics: _Metrics):
        self.metrics = metrics
        self.lock = threading.Lock()  # gthread workers record from several threads
        self.counts: Dict[Tuple[str, str], int] = {}
        # histogram child -> [observations per bucket..., sum of the observed seconds]; made once
        # per child (slot()), zeroed when published.
        self.timings: Dict[Any, list] = {}
        self.routes = {label: self.slot(child) for label, child in metrics._timed.items()}
        self.phases: Dict[str, list] = {}
        self.pending = False
        self.waiting = threading.Event()  # set when there is something to publish
        self.publisher_pid = 0

    def slot(self, child: Any) -> list:
        slot = self.timings.get(child)
        if slot is None:
            slot = self.timings[child] = [0] * len(LATENCY_BUCKETS) + [0.0]
        return slot

    def request(self, route: str, code: str, seconds: float,
                phases: Optional[Iterable[Tuple[str, float]]] = None) -> None:
        with self.lock:
            key = (route, code)
            counts = self.counts
            counts[key] = counts.get(key, 0) + 1
            slot = self.routes[route]
            slot[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bucket with seconds <= its bound
            slot[-1] += seconds
            if phases:
                for name, phase_seconds in phases:
                    slot = self.phases.get(name)
                    if slot is None:
                        slot = self.phases[name] = self.slot(self.metrics.phase(name))
                    slot[bisect_left(LATENCY_BUCKETS, phase_seconds)] += 1
                    slot[-1] += phase_seconds
            self.pending = True
        self._wake()

    def _wake(self) -> None:
        if self.publisher_pid != _pid[0]:  # first record in this worker (forked from the master)
            with self.lock:  # one publisher, even when two threads record the first requests
                if self.publisher_pid != _pid[0]:
                    self.publisher_pid = _pid[0]
                    self.waiting = threading.Event()
                    threading.Thread(target=self._publish_forever, name="smsuper-metrics", daemon=True).start()
        if not self.waiting.is_set():
            self.waiting.set()

    def _publish_forever(self) -> None:
        # Asleep in wait() while the worker is idle: no wake-ups without requests.
        while True:
            self.waiting.wait()
            self.waiting.clear()
            time.sleep(PUBLISH_DELAY)  # gather what arrives meanwhile into one publish
            self.publish()

    def publish(self) -> None:
        with self.lock:
            counts, self.counts = self.counts, {}
            timings = []
            if self.pending:
                for child, slot in self.timings.items():
                    if slot[-1] or any(slot):
                        timings.append((child, slot[:]))
                        slot[:] = [0] * len(LATENCY_BUCKETS) + [0.0]
                self.pending = False
        if self.metrics.requests is not None:
            for (route, code), number in counts.items():
                self.metrics.count(route, code).inc(number)
        for child, slot in timings:
            # A whole batch per bucket: Histogram.observe() would write one observation at a
            # time. _sum and _buckets are prometheus_client's (0.26.0, pinned in pyproject.toml):
            # its sum, and one non-cumulative count per bucket, as observe() keeps them.
            child._sum.inc(slot[-1])
            for index, number in enumerate(slot[:-1]):
                if number:
                    child._buckets[index].inc(number)


def install(directory: Optional[str], count_requests: bool = True) -> None:
    """In the gunicorn master, before the app loads and workers fork: start recording.
    `count_requests`: False behind nginx, whose access log PID 1 counts instead."""
    global _state
    if not directory:
        return
    if _state is not None and _state.directory == directory:
        return  # SIGHUP: gunicorn reloads its config; the metrics of this process stay
    _state = _Metrics(directory, count_requests)
    # A master restarted by PID 1 finds its predecessors' files: fold them now.
    try:
        multiproc.compact(directory, keep_pids=[os.getpid()])
    except OSError as error:
        from ... import log

        log.warning(f"could not fold the metrics files of earlier processes in {directory}: "
                    f"{error.strerror or error}; the next worker exit tries again")


def enabled() -> bool:
    return _state is not None


class RequestMetrics:
    """WSGI middleware: counts and times every request a worker answers, until its body
    has been sent (the server closes the body's iterable then, PEP 3333): an answer
    streamed from an iterator is timed whole, not only until the view returned it."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        metrics = _state
        if metrics is None:
            return self.app(environ, start_response)
        request = _Sent(metrics, environ, start_response)
        metrics.requests_in_flight.add(1)
        try:
            request.body = self.app(environ, request.start_response)
        except BaseException:
            request.finished()  # gunicorn answers 500
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(request.body, file_wrapper):
            request.finished()  # the server sends it with sendfile(), which a wrapper would hide
            return request.body
        return request


class _Sent:
    """One request being answered (its route, its status once known, when it began) and the
    app's body, handed on to the server as it is: its close() ends the request's timing."""

    __slots__ = ("metrics", "environ", "route", "status", "began", "_start_response", "done", "body")

    def __init__(self, metrics: _Metrics, environ: dict, start_response: Callable):
        self.metrics = metrics
        self.environ = environ
        self.route = metrics.label(environ.get("PATH_INFO", ""))
        self.status = "500"  # what gunicorn answers when the app raises
        self._start_response = start_response
        self.done = False
        self.body: Iterable[bytes] = ()
        self.began = time.perf_counter()

    def start_response(self, line: str, headers: list, *exc_info: Any) -> Callable:
        self.status = line[:3]
        return self._start_response(line, headers, *exc_info)

    def finished(self) -> None:
        if self.done:
            return
        self.done = True
        elapsed = time.perf_counter() - self.began
        self.metrics.requests_in_flight.add(-1)
        self.metrics.batch.request(self.route, self.status, elapsed, self.environ.get(PHASES_KEY))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.finished()


def wrap(app: Callable) -> Callable:
    return RequestMetrics(app) if _state is not None else app


def record_phases(environ: dict, phases: Optional[Iterable[Tuple[str, float]]]) -> None:
    """In the app: this invocation's phases, recorded with its request by the middleware."""
    if _state is not None and phases:
        environ[PHASES_KEY] = phases


def publish_pending(recycled: bool = False) -> None:
    """In a worker about to exit: publish what its thread has not yet. `recycled`: it leaves
    because it has served SMSUPER_MAX_REQUESTS requests."""
    if _state is not None:
        if recycled:
            _state.recycles.inc()
        _state.batch.publish()


def stream_started() -> None:
    if _state is not None:
        _state.streams_in_flight.inc()


def stream_ended(first_byte: Optional[float], seconds: float, chunks: int, sent: int) -> None:
    """A streamed answer is over: `first_byte` None when it sent nothing."""
    if _state is None:
        return
    _state.streams_in_flight.dec()
    if first_byte is not None:
        _state.stream_first_byte.observe(first_byte)
    _state.stream_duration.observe(seconds)
    if chunks:
        _state.stream_chunks.inc(chunks)
        _state.stream_bytes.inc(sent)


def batch_sent(waits: Iterable[float]) -> None:
    """A batch went to the model: `waits`, the seconds each of its requests waited for it."""
    if _state is None:
        return
    waits = list(waits)
    _state.batch_size.observe(len(waits))
    for seconds in waits:
        _state.batch_wait.observe(seconds)


def model_loaded(seconds: float) -> None:
    if _state is not None:
        _state.load_seconds.set(seconds)


def worker_exited(pid: int, timed_out: bool, replaced: bool) -> None:
    """In the master, when it has reaped worker `pid`."""
    if _state is None:
        return
    if timed_out:
        _state.timeouts.inc()
    if replaced:
        _state.restarts.inc()
    try:
        multiproc.compact(_state.directory, keep_pids=[os.getpid()])
    except OSError:
        pass  # the next exit compacts again; a scrape still reads the files meanwhile
