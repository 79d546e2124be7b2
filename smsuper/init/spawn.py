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

A program the workload's user cannot reach (under root's 0700 home, or a
script whose interpreter is there) is 126 with a message that names the path,
the user and the directory or mode to change. The child, already that user,
finds what stops it; only whether an unreachable path exists at all needs
PID 1's eyes (a plain stat, which follows nothing it could act on).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

from . import capabilities
from .fds import close_fds_except

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
        role: str,  # names the child in logs and metrics: one of roles.py's
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
        # What a graceful stop sends, whichever stop signal PID 1 received (nginx: SIGQUIT,
        # the gunicorn master: SIGTERM). None: the signal received, or the job's rewrite of it
        # (SMSUPER_STOP_SIGNAL), SIGTERM when the stop is PID 1's own decision.
        stop_signal: Optional[int] = None,
        restart: bool = False,  # restarted with backoff while the job runs
        foreground: bool = False,  # take the controlling terminal when stdin is one
        # Called (child, exit status) each time the child exits, before the supervisor
        # decides on a restart or a stop: the job's reaction to this child alone.
        on_exit: Optional[Callable[[Any, Any], None]] = None,
        # Descriptors the child keeps (a channel to PID 1); every other one is closed.
        pass_fds: Sequence[int] = (),
        # Starts the child instead of spawn() (same arguments, returns its pid): a model forked
        # from a pre-started template (serve/multimodel/template.py). The pid must be PID 1's child.
        spawner: Optional[Callable[..., int]] = None,
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
        self.on_exit = on_exit
        self.pass_fds = tuple(pass_fds)
        self.spawner = spawner


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
        code, text = _explain(spec, report.decode("utf-8", "replace"))
        raise SpawnError(code, f"{spec.argv[0]}: {text}")
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
    close_fds_except({0, 1, 2, error_write, *spec.pass_fds})
    for fd in spec.pass_fds:
        os.set_inheritable(fd, True)
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


class _Unreachable(Exception):
    """Candidates this user may not reach: [(path, the denial, the path whose existence PID 1 must check)]."""

    def __init__(self, denials: list):
        super().__init__("permission denied")
        self.denials = denials


def _exec_first(candidates: list, argv: list, env: dict) -> None:
    """execve each PATH candidate in turn, keeping the most telling error."""
    saved: Optional[OSError] = None
    denials = []
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as failure:
            if failure.errno == errno.EACCES:
                # Keep looking, as execvp does: a later candidate may run. Whether this
                # one exists behind the closed door is for PID 1 to say.
                denials.append(_why_denied(os.fsdecode(path)))
                continue
            # ENOENT/ENOTDIR: keep looking. Anything else is the answer unless a later
            # candidate runs, as execvp does.
            if saved is None or saved.errno in (errno.ENOENT, errno.ENOTDIR):
                saved = failure
    if saved is not None and saved.errno not in (errno.ENOENT, errno.ENOTDIR):
        raise saved
    if denials:
        raise _Unreachable(denials)
    raise saved if saved else OSError(errno.ENOENT, "not found")


def _why_denied(path: str, depth: int = 0) -> tuple:
    """(path, why this user may not run it, the path hidden from it or ""), seen as the user."""
    closed = _closed_directory(path)
    if closed:
        return (path, f"cannot enter {_describe(closed)}|{closed}", path)
    if not os.access(path, os.X_OK):
        if _mode_allows_execute(path):
            return (path, f"may not execute {path}: its mode allows it, so its file system is mounted noexec "
                          f"or a security policy forbids it|mount", "")
        return (path, f"may not execute {_describe(path)}|file", "")
    interpreter = _interpreter(path) if depth == 0 else ""
    if interpreter:
        inner = _why_denied(interpreter, depth + 1)
        return (path, f"interpreter:{inner[0]}|{inner[1]}", inner[2])
    return (path, "", "")


def _closed_directory(path: str) -> str:
    """The first directory on the way to `path` this process may not enter, or ""."""
    directory = os.path.dirname(os.path.abspath(path))
    parts = [p for p in directory.split("/") if p]
    current = "/"
    for part in [""] + parts:
        current = os.path.join(current, part) if part else current
        if not os.access(current, os.X_OK):
            return current
    return ""


def _mode_allows_execute(path: str) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    if info.st_uid == os.getuid():
        return bool(info.st_mode & 0o100)
    if info.st_gid == os.getgid() or info.st_gid in os.getgroups():
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def _describe(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return path
    return f"{path} (mode {info.st_mode & 0o7777:04o}, owner {_user_name(info.st_uid)})"


def _interpreter(path: str) -> str:
    """A script's `#!` interpreter, read as the user (a script it may run but not read is its own problem)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        head = os.read(fd, 256)
    except OSError:
        return ""
    finally:
        os.close(fd)
    if not head.startswith(b"#!"):
        return ""
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else ""


def _report_and_exit(error_write: int, failure: BaseException) -> None:
    try:
        if isinstance(failure, _Unreachable):
            text = "\0".join("\t".join(denial) for denial in failure.denials)
            code = "denied"
        elif isinstance(failure, OSError) and failure.errno in (errno.ENOENT, errno.ENOTDIR):
            code, text = "127", "not found"
        elif isinstance(failure, OSError) and failure.errno in (errno.ENOEXEC, errno.EISDIR, errno.EPERM):
            code, text = "126", f"cannot execute: {os.strerror(failure.errno)}"
        else:
            code, text = "126", f"cannot start: {failure}"
        os.write(error_write, f"{code}:{text}".encode("utf-8", "replace"))
    finally:
        os._exit(127)


def _explain(spec: ChildSpec, report: str) -> Tuple[int, str]:
    """The child's report as (exit code, message), in PID 1."""
    code, _, text = report.partition(":")
    if code != "denied":
        return int(code), text
    for entry in text.split("\0"):
        path, why, hidden = entry.split("\t")
        # Behind a closed directory the child cannot tell a missing program from a present
        # one: a PATH entry like /root/.local/bin without it is not this program's place.
        if hidden and not _exists(hidden):
            continue
        return 126, _denied_message(spec, path, why)
    return 127, "not found"


def _exists(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _denied_message(spec: ChildSpec, path: str, why: str) -> str:
    uid = spec.credentials.uid if spec.credentials is not None else os.geteuid()
    who = f"user {_user_name(uid)} (uid {uid})"
    subject = "" if path == spec.argv[0] else f"{path}: "
    if why.startswith("interpreter:"):
        interpreter, _, why = why[len("interpreter:"):].partition("|")
        subject = f"{subject}its interpreter {interpreter}: "
        path = interpreter
    detail, _, where = why.partition("|")
    if not detail:
        return (f"permission denied: {subject}{who} may not execute it, though every directory and the "
                f"file's mode allow it (a noexec mount or a security policy?)")
    if where == "file":
        fix = f"make it executable for that user (e.g. chmod o+rx {path})"
    elif where == "mount":
        fix = f"put {os.path.basename(path)} on a file system mounted with exec"
    else:
        fix = f"let that user enter {where} (e.g. chmod o+x {where}), or install {os.path.basename(path)} elsewhere"
    if spec.credentials is not None:
        fix += ", or set SMSUPER_USER to an account that may run it"
    return f"permission denied: {subject}{who} {detail}; {fix}"


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
