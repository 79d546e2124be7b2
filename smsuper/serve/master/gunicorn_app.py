"""The gunicorn master (`python smsuper.pyz _gunicorn ...`), through gunicorn's application API.

Sync workers by default (CPU-bound models, one request per worker at a
time) that keep nginx's connections open between requests
(worker/keepalive_worker.py); gthread workers when SMSUPER_WORKER_THREADS > 1. Everything it
runs with comes from the ServeConfig PID 1 hands over (serve/config.py): no setting is read again
here, and every timeout is one of serve/timeouts.py's. gunicorn writes no access log
(nginx does) and its titles say the role: `gunicorn: master [smsuper serve]`
and `gunicorn: worker [smsuper serve]`.

Workers report readiness through the runtime directory (serve/readiness.py): the
model is loaded while the worker boots, then post_worker_init marks it
ready; child_exit and worker_exit remove the mark. A heartbeat thread keeps
the master from killing a worker whose model takes longer than the request
timeout to load.

Stopping drains instead of dropping. Each worker leaves the master's process
group, so PID 1's SIGTERM reaches only the master; the master then keeps
serving until nginx (which got SIGQUIT and finishes every request it holds)
has exited, and only then stops its workers gracefully. Requests waiting in
the socket's backlog are thus served, not reset. Workers get SIGTERM as their
parent-death signal, so they never outlive a master killed with SIGKILL.

gunicorn halts the whole server when a worker exits with 3 or 4 (its codes
for "the worker could not boot" / "the app could not load"), to stop a crash
loop. User code may exit with any code, so that meaning is kept only for a
worker that never finished booting: post_worker_init marks the worker's
heartbeat file (a mode bit the master can fstat), and a marked worker's 3 or 4
is an ordinary dead worker, replaced and counted like one.

A process the user's code forks from a worker (without exec) keeps none of
gunicorn's sockets: the keep-alive worker closes its own in such a child, and
for the other worker classes an at-fork hook blanks every socket named by the
listener's address (the listener and the connections it accepted).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer
from gunicorn.glogging import Logger

from ... import log
from ...init import capabilities, procfs
from ...metrics.worker import serving as serving_metrics
from .. import readiness, routes, timeouts
from ..config import ServeConfig, received
from ..runtime import RuntimeDir
from . import gpus

PROC_NAME = "smsuper serve"
KEEPALIVE_WORKER = "smsuper.serve.worker.keepalive_worker.KeepAliveWorker"
# gthread with a stop signal for the batcher (batching.py): its threads receive a batch's requests.
BATCHING_WORKER = "smsuper.serve.worker.batching_worker.BatchingWorker"
# Behind nginx, which bounds the request line and every header line itself (nginx.HEADER_BUFFER)
# and answers in JSON, gunicorn's own limits must be out of reach: its errors are HTML pages
# (431 for more than 100 headers, 400 for a line over 4094 bytes). 0 is gunicorn's largest
# request line (8190 bytes) and no limit on a header line; 32768 fields is its maximum, more
# than nginx's 32 KiB of headers can hold. The client's X-Forwarded-Proto/-Ssl mean nothing
# here (nginx speaks plain HTTP to the workers), and two that disagree would be a 400 page.
BEHIND_NGINX: Dict[str, Any] = {
    "limit_request_line": 0,
    "limit_request_fields": 32768,
    "limit_request_field_size": 0,
    "secure_scheme_headers": {},
}
# Set on a worker's heartbeat file once it has booted: the file is shared with the master
# (it fstat()s it for the timeout), and gunicorn (>= 20) never changes its mode itself.
BOOTED_MARK = stat.S_IXUSR

# The application state of this process (master with preload, or worker).
_service: Any = None
_heartbeat: Optional["Heartbeat"] = None
_worker: Any = None  # this process's gunicorn worker, once forked


def _worker_stopping() -> bool:
    """True once this worker was asked to stop (SIGTERM sets worker.alive to False)."""
    return _worker is not None and not _worker.alive


class Heartbeat(threading.Thread):
    """Tells the master the worker is alive while the model loads (it is not serving yet)."""

    def __init__(self, worker: Any, interval: float):
        super().__init__(name="smsuper-heartbeat", daemon=True)
        self.worker = worker
        self.interval = interval
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.worker.notify()
            except Exception:
                return


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return log.json_line("gunicorn", record.levelname.lower(), message)


class JsonLogger(Logger):
    """gunicorn's own lines as JSON too, when SMSUPER_LOG_FORMAT=json."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(_JsonFormatter())


def _mark_booted(worker: Any) -> None:
    try:
        fd = worker.tmp.fileno()
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | BOOTED_MARK)
    except (OSError, ValueError):
        pass  # unmarked, its exit 3 or 4 halts the server as gunicorn would: never a worse outcome


def _had_booted(worker: Any) -> bool:
    try:
        return bool(os.fstat(worker.tmp.fileno()).st_mode & BOOTED_MARK)
    except (OSError, ValueError):
        return False


def _reaped(pid: int) -> bool:
    """Whether this child is gone for good: waited for already, not even a zombie any more."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def _listener_names(worker: Any) -> set:
    names = set()
    for listener in worker.sockets:
        try:
            names.add(listener.getsockname())
        except OSError:
            pass
    return names


def _blank_server_sockets(names: set) -> None:
    """In a process the user's code forked from a worker: gunicorn's sockets (the listener and
    every connection it accepted, all named by the listener's address) must not live on in it,
    or nginx waits on a dead worker's connections until its timeout. Each becomes /dev/null
    rather than a free number: objects of the worker's in this copy of its memory may still
    close their number later, which must not hit a file the child opened since."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:
        return
    for fd in fds:
        if fd == null:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            name = sock.getsockname()
        except OSError:
            name = None
        finally:
            sock.detach()
        if name in names:
            os.dup2(null, fd)
    os.close(null)


def _nginx_running(pidfile: str) -> bool:
    try:
        with open(pidfile) as handle:
            pid = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return False
    return pid > 0 and procfs.is_running(pid)


class DrainingArbiter(Arbiter):
    """gunicorn's arbiter, but SIGTERM first waits for nginx to finish its requests."""

    def handle_term(self) -> None:
        application: "ServeApplication" = self.app
        config = application.config
        received = time.monotonic()
        pidfile = application.nginx_pidfile
        # Bidirectional streams hold nginx's connections open: the workers let them finish
        # and close them (worker/websocket.py), so nginx can exit before its own deadline.
        for pid in list(self.WORKERS):
            try:
                os.kill(pid, signal.SIGWINCH)
            except OSError:
                pass
        if pidfile and _nginx_running(pidfile):
            log.info("SIGTERM: serving until nginx has answered every request it holds")
            deadline = received + config.drain_wait
            while _nginx_running(pidfile) and time.monotonic() < deadline:
                # The main loop is paused here: do its chores so dead workers are still replaced.
                self.reap_workers()
                self.murder_workers()
                self.manage_workers()
                time.sleep(0.05)
        left = config.stop_deadline - (time.monotonic() - received)
        self.cfg.set("graceful_timeout", max(1, int(left)))
        raise StopIteration

    def reap_workers(self) -> None:
        # gunicorn raises HaltServer for a worker that exited 3 or 4, right after waiting for
        # it and before its bookkeeping. The worker it means is the one no longer a child:
        # had it booted, finish its bookkeeping as gunicorn does for any dead worker, and go on
        # reaping (other workers may have exited meanwhile).
        while True:
            try:
                super().reap_workers()
                return
            except HaltServer as halt:
                dead = [worker for pid, worker in self.WORKERS.items() if _reaped(pid)]
                if len(dead) != 1 or not _had_booted(dead[0]):
                    raise
                worker = dead[0]
                log.error(f"worker {worker.pid} exited with code {halt.exit_status} after it had booted: "
                          f"the model's code ended the process (os._exit or exit()); replacing it like any "
                          f"dead worker (gunicorn reads {halt.exit_status} as a boot failure only while a "
                          f"worker boots)")
                del self.WORKERS[worker.pid]
                worker.tmp.close()
                self.cfg.child_exit(self, worker)

    def stop(self, graceful: bool = True) -> None:
        # Workers reaped from here on are not replaced: not restarts (metrics).
        self.smsuper_stopping = True
        super().stop(graceful)

    # SIGHUP. gunicorn's reload starts a new generation of workers and stops the old one
    # at once, so /ping would fail until the new ones have loaded the model. Here the old
    # workers keep serving until every new one is ready (a new model that never loads leaves
    # the old ones serving), then get SIGTERM and finish what they hold. Their exits are
    # not restarts.
    def reload(self) -> None:
        self.smsuper_retiring = set(self.WORKERS)
        self.smsuper_retired: set = set()  # told to go, once: a second SIGTERM may find it exiting
        super().reload()

    def manage_workers(self) -> None:
        retiring = getattr(self, "smsuper_retiring", None)
        if not retiring:
            super().manage_workers()
            return
        retiring &= set(self.WORKERS)  # the reaped ones are gone for good
        fresh = [pid for pid in self.WORKERS if pid not in retiring]
        for _ in range(self.num_workers - len(fresh)):
            self.spawn_worker()
        if self._ready(fresh):
            for pid in retiring - self.smsuper_retired:
                self.smsuper_retired.add(pid)
                self.kill_worker(pid, signal.SIGTERM)

    def _ready(self, pids: List[int]) -> bool:
        runtime: RuntimeDir = self.app.runtime
        return len(pids) >= self.num_workers and all(
            os.path.exists(os.path.join(runtime.ready_dir, str(pid))) for pid in pids)


def _hooks(runtime: RuntimeDir, config: ServeConfig) -> Dict[str, Any]:
    def post_fork(server: Any, worker: Any) -> None:
        global _heartbeat, _worker
        _worker = worker
        os.setpgid(0, 0)  # out of the master's group: PID 1's SIGTERM is for the master alone
        capabilities.die_with_parent(signal.SIGTERM)
        if os.getppid() != worker.ppid:
            os._exit(0)  # the master died before the line above
        gpus.set_this_process(getattr(worker, "smsuper_gpu_id", None))
        if not hasattr(worker, "hand_over"):  # the keep-alive worker cleans its own children, and more
            names = _listener_names(worker)
            os.register_at_fork(after_in_child=lambda: _blank_server_sockets(names))
        _heartbeat = Heartbeat(worker, timeouts.heartbeat_interval(config.timeout))
        _heartbeat.start()
        from ..worker import streaming

        streaming.set_heartbeat(worker.notify)  # a stream keeps the worker alive while chunks flow

    def post_worker_init(worker: Any) -> None:
        if _heartbeat is not None:
            _heartbeat.done.set()
        if _service is not None and _service.ready and os.getppid() == worker.ppid:
            readiness.mark_ready(runtime, os.getpid())
        if getattr(_service, "can_stream", False) and hasattr(worker, "streams"):
            from ..worker.websocket import StreamServer

            path = next(route.path for route in routes.TABLE if route.body == routes.UPGRADED)
            worker.streams = StreamServer(path, _service.stream_messages, config.streams_per_worker,
                                          config.max_payload_bytes, config.stream_stop_deadline)
        _mark_booted(worker)  # last: a failure above is still a failure to boot

    exited: Deque[Tuple[Any, bool]] = deque()
    busy = [False]

    def settle_exits() -> None:
        # gunicorn calls child_exit from its SIGCHLD handler, which can interrupt an
        # earlier child_exit holding a flock (readiness, metrics compaction): taking
        # it again would deadlock the master. So only the outermost call does the work.
        if busy[0]:
            return
        busy[0] = True
        try:
            while exited:
                worker, replaced = exited.popleft()
                readiness.mark_gone(runtime, worker.pid)
                # `aborted`: the master sent SIGABRT because the worker's request ran past its timeout.
                serving_metrics.worker_exited(worker.pid, timed_out=bool(getattr(worker, "aborted", False)),
                                              replaced=replaced)
        finally:
            busy[0] = False

    def child_exit(server: Any, worker: Any) -> None:
        retired = worker.pid in getattr(server, "smsuper_retiring", ())  # by a SIGHUP reload
        exited.append((worker, not getattr(server, "smsuper_stopping", False) and not retired))
        settle_exits()

    def pre_fork(server: Any, worker: Any) -> None:
        settle_exits()  # an exit queued just as the outer call finished
        # Chosen here, in the master, which sees every live worker; the child inherits it.
        worker.smsuper_gpu_id = gpus.choose_for_worker(
            getattr(live, "smsuper_gpu_id", None) for live in server.WORKERS.values())

    def worker_exit(server: Any, worker: Any) -> None:
        serving_metrics.publish_pending(recycled=worker.nr >= worker.max_requests)
        readiness.mark_gone(runtime, os.getpid())

    def worker_abort(worker: Any) -> None:
        log.error(f"worker {os.getpid()} killed: a request ran longer than SAGEMAKER_MODEL_SERVER_TIMEOUT="
                  f"{config.timeout} s (+{config.worker_timeout - config.timeout} s; behind nginx the client "
                  f"already got a 504); a new worker replaces this one")

    def on_exit(server: Any) -> None:
        readiness.clear(runtime)

    return {"pre_fork": pre_fork, "post_fork": post_fork, "post_worker_init": post_worker_init, "child_exit": child_exit,
            "worker_exit": worker_exit, "worker_abort": worker_abort, "on_exit": on_exit}


def _worker_tmp_dir(runtime: RuntimeDir) -> str:
    # The heartbeat file is touched constantly: keep it in memory when possible.
    return "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else runtime.shared


def build_wsgi(config: ServeConfig, runtime: Optional[RuntimeDir],
               should_stop: Any = lambda: False) -> Any:
    """Load the user's code in this process and return the WSGI app that serves it."""
    global _service
    began = time.perf_counter()
    if config.app:
        from ..worker.user_app import UserAppService

        service = UserAppService(config, runtime, should_stop)
        service.load()
        app = service
    else:
        from ..worker.app import create_app
        from ..worker.service import ModelService

        service = ModelService(config, runtime)
        service.load()
        app = create_app(service)
    if service.ready:
        serving_metrics.model_loaded(time.perf_counter() - began)
    _service = service
    return serving_metrics.wrap(app)


class ServeApplication(BaseApplication):
    def __init__(self, config: ServeConfig, runtime: RuntimeDir, bind: str, nginx_pidfile: Optional[str],
                 metrics_dir: Optional[str] = None):
        self.config = config
        self.runtime = runtime
        self.bind = bind
        self.nginx_pidfile = nginx_pidfile
        self.metrics_dir = metrics_dir
        super().__init__()

    def options(self) -> Dict[str, Any]:
        config = self.config
        options: Dict[str, Any] = {
            "bind": [self.bind],
            "workers": config.workers,
            "worker_class": self.worker_class(),
            "threads": config.worker_threads,
            "timeout": config.worker_timeout,
            "graceful_timeout": int(config.stop_deadline),
            "keepalive": timeouts.WORKER_KEEPALIVE,
            "preload_app": config.preload,
            "max_requests": config.max_requests,
            "max_requests_jitter": config.max_requests // 10,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": config.log_level,
            "proc_name": PROC_NAME,
            "worker_tmp_dir": _worker_tmp_dir(self.runtime),
        }
        if self.bind.startswith("unix:"):
            options.update(BEHIND_NGINX)
        if config.log_format == "json":
            options["logger_class"] = JsonLogger
        options.update(_hooks(self.runtime, config))
        return options

    def worker_class(self) -> str:
        if self.config.batching:
            return BATCHING_WORKER
        if self.config.threads > 1:
            return "gthread"
        # Behind nginx only: it is the client that keeps connections the way the worker expects.
        return KEEPALIVE_WORKER if self.bind.startswith("unix:") else "sync"

    def load_config(self) -> None:
        # Before the app loads (preload) and before any worker forks, so every process records.
        # Behind nginx, PID 1 counts the requests from nginx's access log (what the clients got).
        serving_metrics.install(self.metrics_dir, count_requests=not self.bind.startswith("unix:"))
        gpus.count_in_master()
        for key, value in self.options().items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        if not self.config.app:
            # Imported once here, so forked workers share it instead of each importing Flask.
            from ..worker import app  # noqa: F401

    def load(self) -> Any:
        return build_wsgi(self.config, self.runtime, _worker_stopping)

    def run(self) -> None:
        DrainingArbiter(self).run()


def main(args: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="smsuper _gunicorn")
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--bind", required=True, help="unix:PATH, or HOST:PORT without nginx")
    parser.add_argument("--nginx-pidfile", default=None, help="drain until this nginx has exited on SIGTERM")
    parser.add_argument("--metrics-dir", default=None, help="record request metrics here (multiprocess mode)")
    options = parser.parse_args(args)
    config = received(os.environ)
    log.configure(config.log_level, config.log_format)
    ServeApplication(config, RuntimeDir(options.runtime_dir), options.bind, options.nginx_pidfile,
                     options.metrics_dir).run()
    return 0
