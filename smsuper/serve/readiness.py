"""The readiness protocol behind /ping: marker files in the runtime directory.

/ping must say 200 only when the model is loaded and a worker can serve, and
must answer in milliseconds even while every worker is busy with a long
prediction. So /ping never reaches a worker: nginx answers it from the
existence of one file, `ready`, and serves `ping-status.json` (why not) with
a 503 otherwise.

Who writes what:
- a worker, once its model is loaded (gunicorn's post_worker_init), creates
  `ready.d/<pid>` and `ready`;
- the gunicorn master, when a worker exits (child_exit), and the worker
  itself on a clean exit (worker_exit), remove `ready.d/<pid>`, and `ready`
  when no marker is left;
- PID 1 removes everything when the gunicorn master dies (its workers die
  with it: they receive SIGTERM as their parent-death signal).
Both updates run under one flock, so "last marker gone" and "a new worker is
ready" cannot interleave into a wrong answer.

A model that fails to load is recorded in `ping-status.json` and logged once
for all workers: the first to create `logged.d/<hash of the message>` with
O_EXCL logs the traceback, the others stay quiet.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from contextlib import contextmanager
from typing import Iterator

from .runtime import RuntimeDir


@contextmanager
def _locked(runtime: RuntimeDir) -> Iterator[None]:
    # Not re-entrant: a process must never ask for it while holding it (gunicorn_app's
    # child_exit hook, run from gunicorn's SIGCHLD handler, makes sure of that).
    # Read-only is enough for flock, and lets the workload's user lock a file PID 1 (root) created.
    fd = os.open(runtime.ready_lock, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _touch(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mark_ready(runtime: RuntimeDir, pid: int) -> None:
    with _locked(runtime):
        _touch(os.path.join(runtime.ready_dir, str(pid)))
        _touch(runtime.ready_flag)


def mark_gone(runtime: RuntimeDir, pid: int) -> None:
    """A worker left: drop its marker, and the shared flag if it was the last."""
    with _locked(runtime):
        _unlink(os.path.join(runtime.ready_dir, str(pid)))
        try:
            left = os.listdir(runtime.ready_dir)
        except FileNotFoundError:
            left = []
        if not left:
            _unlink(runtime.ready_flag)


def clear(runtime: RuntimeDir) -> None:
    """No worker can serve (the gunicorn master is gone)."""
    with _locked(runtime):
        _unlink(runtime.ready_flag)
        try:
            names = os.listdir(runtime.ready_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            _unlink(os.path.join(runtime.ready_dir, name))


def reset(runtime: RuntimeDir) -> None:
    """A fresh start: no stale flag from an earlier run, every failure may be logged again."""
    clear(runtime)
    for name in os.listdir(runtime.elections):
        _unlink(os.path.join(runtime.elections, name))


def is_ready(runtime: RuntimeDir) -> bool:
    return os.path.exists(runtime.ready_flag)


def write_status(runtime: RuntimeDir, status: str, message: str) -> None:
    """Replace the body of a failing /ping atomically (write, then rename)."""
    body = json.dumps({"status": status, "error": message}, ensure_ascii=False) + "\n"
    temporary = f"{runtime.ping_status}.{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(body)
    os.chmod(temporary, 0o644)
    os.replace(temporary, runtime.ping_status)


def first_to_report(runtime: RuntimeDir, message: str) -> bool:
    """True for exactly one caller per distinct message across all processes."""
    # Imported here, not at the top: PID 1 imports this module, and hashlib maps OpenSSL's
    # libcrypto (about 3.5 MB of PID 1's RSS) although only a worker whose model failed hashes.
    import hashlib

    digest = hashlib.sha256(message.encode("utf-8", "replace")).hexdigest()[:16]
    try:
        os.close(os.open(os.path.join(runtime.elections, digest),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        return True
    except FileExistsError:
        return False
    except OSError as failure:
        # No usable runtime directory (a test, a read-only disk): better twice than never.
        return failure.errno != errno.EEXIST
