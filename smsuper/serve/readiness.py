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
ready" cannot interleave into a wrong answer. Nobody waits for that lock for
ever: a holder stopped mid-way (SIGSTOP) costs a warning, not PID 1's loop.

All of it lives in the servers' own directory (runtime.py), which the workload
can rearrange: every operation here goes through init/untrusted.py (no link
followed, no FIFO opened, /ping's body replaced by rename, never written in
place), so PID 1 running these as root acts on nothing but these files.

A model that fails to load is recorded in `ping-status.json` and logged once
for all workers: the first to create `logged.d/<hash of the message>` with
O_EXCL logs the traceback, the others stay quiet.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterator

from ..init import untrusted
from .runtime import RuntimeDir

LOCK_WAIT = 2.0  # seconds: the lock is held for microseconds, unless its holder was stopped
_TOUCH = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@contextmanager
def _locked(runtime: RuntimeDir) -> Iterator[None]:
    # Not re-entrant: a process must never ask for it while holding it (gunicorn_app's
    # child_exit hook, run from gunicorn's SIGCHLD handler, makes sure of that).
    # Read-only is enough for flock, and lets the workload's user lock a file PID 1 (root) created.
    try:
        fd = untrusted.open_regular(runtime.ready_lock)
    except OSError:
        fd = -1  # gone or replaced by something else: go on unlocked rather than not at all
    try:
        if fd >= 0:
            deadline = time.monotonic() + LOCK_WAIT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        from .. import log

                        log.warning(f"{runtime.ready_lock} is held for more than {LOCK_WAIT:g} s (a stopped "
                                    f"process?): updating readiness without it")
                        break
                    time.sleep(0.001)
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # closing releases the lock


def _touch(path: str) -> None:
    os.close(os.open(path, _TOUCH, 0o644))


def mark_ready(runtime: RuntimeDir, pid: int) -> None:
    with _locked(runtime):
        _touch(os.path.join(runtime.ready_dir, str(pid)))
        _touch(runtime.ready_flag)


def mark_gone(runtime: RuntimeDir, pid: int) -> None:
    """A worker left: drop its marker, and the shared flag if it was the last."""
    with _locked(runtime):
        untrusted.unlink(os.path.join(runtime.ready_dir, str(pid)))
        try:
            fd = untrusted.open_directory(runtime.ready_dir)
        except OSError:
            left = []
        else:
            try:
                left = os.listdir(fd)
            finally:
                os.close(fd)
        if not left:
            untrusted.unlink(runtime.ready_flag)


def clear(runtime: RuntimeDir) -> None:
    """No worker can serve (the gunicorn master is gone)."""
    with _locked(runtime):
        untrusted.unlink(runtime.ready_flag)
        _empty(runtime, runtime.ready_dir)


def _empty(runtime: RuntimeDir, directory: str) -> None:
    """Unlink the markers in `directory`: only when it is the real directory of the
    shared directory's owner. Anything else found under its name (a link planted
    there) is unlinked, never followed, and a fresh directory takes its place."""
    try:
        shared = untrusted.open_directory(runtime.shared)
    except OSError:
        return
    name = os.path.basename(directory)
    try:
        owner = os.fstat(shared)
        if untrusted.empty_directory(name, shared, owner.st_uid):
            return
        try:
            untrusted.unlink(name, shared)
            os.mkdir(name, 0o700, dir_fd=shared)
            fd = untrusted.open_directory(name, shared)
        except OSError:
            return  # a directory of someone else's: the servers will say they cannot write there
        try:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        finally:
            os.close(fd)
    finally:
        os.close(shared)


def reset(runtime: RuntimeDir) -> None:
    """A fresh start: no stale flag from an earlier run, every failure may be logged again."""
    clear(runtime)
    _empty(runtime, runtime.elections)


def is_ready(runtime: RuntimeDir) -> bool:
    return os.path.exists(runtime.ready_flag)


def write_status(runtime: RuntimeDir, status: str, message: str) -> None:
    """Replace the body of a failing /ping atomically (a new file, then a rename over the old
    name). Raises OSError (a full disk: ENOSPC); nothing half-written is left then."""
    body = json.dumps({"status": status, "error": message}, ensure_ascii=False) + "\n"
    directory, name = os.path.split(runtime.ping_status)
    fd = untrusted.open_directory(directory)
    try:
        untrusted.replace_file(fd, name, body.encode("utf-8"), 0o644)
    finally:
        os.close(fd)


def write_progress(runtime: RuntimeDir, status: str, message: str) -> None:
    """Like write_status, for a worker that is only on its way (loading): workers load one
    after another, and a later one's progress must not hide the failure an earlier one
    reported, or /ping's reason would flip between the two."""
    with _locked(runtime):
        try:
            said = json.loads(untrusted.read_regular(runtime.ping_status, 1 << 16) or b"{}")
        except (OSError, ValueError):
            said = {}  # none yet, or not ours to believe: write ours
        if isinstance(said, dict) and said.get("status") == "failed":
            return
        write_status(runtime, status, message)


def first_to_report(runtime: RuntimeDir, message: str) -> bool:
    """True for exactly one caller per distinct message across all processes."""
    # Imported here, not at the top: PID 1 imports this module, and hashlib maps OpenSSL's
    # libcrypto (about 3.5 MB of PID 1's RSS) although only a worker whose model failed hashes.
    import hashlib

    digest = hashlib.sha256(message.encode("utf-8", "replace")).hexdigest()[:16]
    try:
        os.close(os.open(os.path.join(runtime.elections, digest),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        return True
    except FileExistsError:
        return False
    except OSError as failure:
        # No usable runtime directory (a test, a read-only disk): better twice than never.
        return failure.errno != errno.EEXIST
