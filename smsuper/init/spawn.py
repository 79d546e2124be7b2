"""Start one child process the way a correct init must.

Why fork+exec in Python rather than subprocess.Popen or os.posix_spawn:
Popen keeps its own idea of which children exist and may later waitpid() a
pid the supervisor already reaped (or a reused one), and posix_spawn cannot
drop privileges or empty the capability bounding set. PID 1 is single
threaded, so running a little Python between fork and exec is safe.

In the child, before exec: its own process group (so a signal reaches the
whole job at once), optionally the terminal's foreground group, default
dispositions for every signal (SIGPIPE included: Python ignores it), an empty
signal mask, only fds 0-2 open, then the credentials. An exec failure is sent
back over a close-on-exec pipe, so the parent can answer 127 (not found) or
126 (not executable) like a shell would.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
TYPE_CHECKING = False  # typing costs PID 1 ~2 MB of RSS; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Callable, Mapping, Optional, Sequence, Tuple

from . import capabilities

# Signals are 1..NSIG-1; SIGKILL and SIGSTOP cannot be touched.
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}
ALL_SIGNALS = [s for s in range(1, signal.NSIG) if s not in _UNCATCHABLE]


# Plain classes rather than dataclasses: importing dataclasses costs PID 1 ~3 MB.

class Credentials:
    """Who a child runs as. Applied in the order that cannot be undone by the child."""

    __slots__ = ("uid", "gid", "groups", "drop_capabilities", "no_new_privs", "keep_capabilities")

    def __init__(self, uid: int, gid: int, groups: Tuple[int, ...] = (),
                 drop_capabilities: bool = True, no_new_privs: bool = True, keep_capabilities: int = 0):
        self.uid = uid
        self.gid = gid
        self.groups = tuple(groups)
        # Empty the capability bounding set so no exec can regain root's powers.
        self.drop_capabilities = drop_capabilities
        # PR_SET_NO_NEW_PRIVS: setuid binaries and file capabilities stop working.
        self.no_new_privs = no_new_privs
        # A mask of capabilities a uid-0 child keeps across exec (through its
        # inheritable set) although the bounding set is emptied: only for a
        # program that cannot run without one (a root nginx calls setgroups()).
        self.keep_capabilities = keep_capabilities if uid == 0 else 0

    def __repr__(self) -> str:
        return f"Credentials(uid={self.uid}, gid={self.gid}, groups={self.groups})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)


class ChildSpec:
    """What to run and how the supervisor treats it."""

    def __init__(
        self,
        role: str,  # names the child in titles, logs and metrics: "command", "script", "nginx", "gunicorn"
        argv: Sequence[str],
        env: Optional[Mapping[str, str]] = None,  # None: inherit os.environ
        cwd: Optional[str] = None,
        credentials: Optional[Credentials] = None,
        # False: the child writes straight to our fds 1 and 2 (a tty keeps working).
        # True: both go through pipes that PID 1 relays line by line, so lines of
        # different processes never glue together and hooks can read them.
        relay: bool = False,
        on_stdout: Optional[Callable[[bytes], None]] = None,
        on_stderr: Optional[Callable[[bytes], None]] = None,
        stop_signal: int = signal.SIGTERM,  # what a graceful stop sends (nginx wants SIGQUIT)
        restart: bool = False,  # restarted with backoff while the job runs
        foreground: bool = False,  # take the controlling terminal when stdin is one
        extra: Optional[dict] = None,  # free slot for the job's own bookkeeping
    ):
        self.role = role
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.credentials = credentials
        self.relay = relay
        self.on_stdout = on_stdout
        self.on_stderr = on_stderr
        self.stop_signal = stop_signal
        self.restart = restart
        self.foreground = foreground
        self.extra = {} if extra is None else extra


class SpawnError(Exception):
    """The program could not be started; `exit_code` is what a shell would return."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def spawn(spec: ChildSpec, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
    """Fork and exec `spec`; return the child's pid or raise SpawnError."""
    if not spec.argv:
        raise SpawnError(127, f"{spec.role}: empty command")
    env = dict(os.environ if spec.env is None else spec.env)
    argv = [os.fsencode(a) for a in spec.argv]
    env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    candidates = _executable_candidates(spec.argv[0], env.get("PATH", os.defpath))
    cap_last = capabilities.last_cap() if spec.credentials and spec.credentials.drop_capabilities else -1
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    pid = os.fork()
    if pid == 0:  # child: only async-safe-ish work from here, never return
        try:
            _become_child(spec, stdout_fd, stderr_fd, error_write, cap_last)
            _exec_first(candidates, argv, env_bytes)
        except BaseException as failure:  # report, then die without running Python's exit handlers
            _report_and_exit(error_write, failure)
        os._exit(127)
    os.close(error_write)
    report = _read_all(error_read)
    os.close(error_read)
    if report:
        os.waitpid(pid, 0)  # reap it here: the supervisor never learns of this pid
        code, _, text = report.decode("utf-8", "replace").partition(":")
        raise SpawnError(int(code), f"{spec.argv[0]}: {text}")
    return pid


def _executable_candidates(program: str, path: str) -> list:
    if "/" in program:
        return [os.fsencode(program)]
    return [os.fsencode(os.path.join(d or ".", program)) for d in path.split(os.pathsep)]


def _become_child(spec: ChildSpec, stdout_fd: int, stderr_fd: int, error_write: int, cap_last: int) -> None:
    os.setpgid(0, 0)
    if spec.foreground:
        _take_terminal()
    signal.set_wakeup_fd(-1)
    for signum in ALL_SIGNALS:
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # 32 and 33 belong to the C library's threads and cannot be set
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    if stdout_fd != 1:
        os.dup2(stdout_fd, 1)
    if stderr_fd != 2:
        os.dup2(stderr_fd, 2)
    _close_fds_except({0, 1, 2, error_write})
    if spec.cwd:
        os.chdir(spec.cwd)
    if spec.credentials is not None:
        _drop_to(spec.credentials, cap_last)


def _take_terminal() -> None:
    """Make the child's group the terminal's foreground group (interactive shells need it)."""
    try:
        if not os.isatty(0):
            return
        # tcsetpgrp from a background group raises SIGTTOU unless it is ignored.
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        os.tcsetpgrp(0, os.getpgrp())
        signal.signal(signal.SIGTTOU, previous)
    except OSError:
        pass


def _close_fds_except(keep: set) -> None:
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _drop_to(creds: Credentials, cap_last: int) -> None:
    keep = creds.keep_capabilities if creds.drop_capabilities else 0
    if keep:
        capabilities.raise_inheritable(keep)  # while the bounding set still allows it
    if creds.drop_capabilities:
        capabilities.empty_bounding_set(cap_last)
    if os.getuid() == 0 or os.geteuid() == 0:
        os.setgroups(list(creds.groups))
        os.setgid(creds.gid)
        os.setuid(creds.uid)
    if creds.drop_capabilities:
        # For uid 0 the setuid above clears nothing; clear what is left by hand.
        capabilities.clear_process_sets(keep)
    if creds.no_new_privs:
        capabilities.set_no_new_privs()


def _exec_first(candidates: list, argv: list, env: dict) -> None:
    """execve each PATH candidate in turn, keeping the most telling error."""
    saved: Optional[OSError] = None
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as failure:
            if failure.errno == errno.EACCES and not _visible(path):
                # A PATH directory this (unprivileged) user cannot search, such as
                # /root/...: the program is not there for it. execvp would answer
                # EACCES, and "cannot execute" for a program that exists nowhere misleads.
                failure = OSError(errno.ENOENT, "not found")
            # ENOENT/ENOTDIR: keep looking. Anything else (EACCES...) is the
            # answer unless a later candidate runs, as execvp does.
            if failure.errno not in (errno.ENOENT, errno.ENOTDIR) or saved is None:
                if saved is None or saved.errno in (errno.ENOENT, errno.ENOTDIR):
                    saved = failure
    raise saved if saved else OSError(errno.ENOENT, "not found")


def _visible(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _report_and_exit(error_write: int, failure: BaseException) -> None:
    try:
        if isinstance(failure, OSError) and failure.errno in (errno.ENOENT, errno.ENOTDIR):
            code, text = 127, "not found"
        elif isinstance(failure, OSError) and failure.errno in (errno.EACCES, errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            code, text = 126, f"cannot execute: {os.strerror(failure.errno)}"
        else:
            code, text = 126, f"cannot start: {failure}"
        os.write(error_write, f"{code}:{text}".encode("utf-8", "replace"))
    finally:
        os._exit(127)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
