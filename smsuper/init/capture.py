"""What a short helper program prints (`nginx -V`), for PID 1, without the subprocess module.

subprocess (with threading, locale, signal's enums, contextlib...) costs PID 1 about 1 MB
of RSS for the life of the container, for one or two calls at start-up. os.posix_spawn and
a pipe do the same job. The caller blocks until the program exits or `timeout` passes
(then it is killed); PID 1's loop is not running meanwhile, so it cannot reap the pid
first, and the pid is reaped here in every case.
"""

from __future__ import annotations

import os
import select
import signal
import time

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List, Optional

# Signals PID 1 ignores or blocks must not stay so in the helper.
_DEFAULT_SIGNALS = [s for s in range(1, signal.NSIG) if s not in (signal.SIGKILL, signal.SIGSTOP, 32, 33)]


def find_program(program: str, path: Optional[str] = None) -> Optional[str]:
    """The executable `program` names (a path, or a name looked up in PATH), or None."""
    candidates = [program] if "/" in program else [
        os.path.join(directory or ".", program)
        for directory in (os.environ.get("PATH", os.defpath) if path is None else path).split(os.pathsep)]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def output(argv: List[str], timeout: float = 10.0) -> Optional[bytes]:
    """stdout and stderr of `argv` (argv[0] a path) together, or None when it could not run or
    did not finish in time."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_DUP2, write_end, 2),
        ], setsigmask=[], setsigdef=_DEFAULT_SIGNALS)
    except OSError:
        os.close(read_end)
        return None
    finally:
        os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    finished = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                readable, _, _ = select.select([read_end], [], [], left)
            except InterruptedError:
                continue
            if not readable:
                break
            chunk = os.read(read_end, 65536)
            if not chunk:  # every writer gone: the program ended (or closed its output)
                finished = True
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if not (finished and _exited_by(pid, deadline)):
            finished = False
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _exited_by(pid, None)
    return b"".join(chunks) if finished else None


def _exited_by(pid: int, deadline: Optional[float]) -> bool:
    """Reap `pid`; False when it is still running at `deadline` (None: wait as long as it takes)."""
    while True:
        try:
            reaped, _ = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        except InterruptedError:
            continue
        except ChildProcessError:
            return True
        if reaped:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
