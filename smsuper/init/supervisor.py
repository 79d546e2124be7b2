"""PID 1's one loop: signals, child exits, relayed output and timers.

Shaped after gunicorn's arbiter: signal handlers only record the signal (the
wakeup fd makes the loop notice); the loop does everything else. One table
holds the children the job asked for; any other process that dies here is an
orphan re-parented to us and is simply reaped.

Stopping, whoever asks (a stop signal, the primary child's exit, the job):
1. each child gets its own stop signal if it has one (nginx: SIGQUIT),
   else the job's rewrite (SMSUPER_STOP_SIGNAL), else the stop signal that
   was received (SIGTERM when nobody sent one), in its whole process group;
   a grace period starts;
2. once the children are gone, any leftover descendants get SIGTERM;
3. when the grace period ends, everything still alive gets SIGKILL;
4. the loop ends when nothing is left to reap and every relay hit EOF.
The exit code is the primary child's (128+N for a signal; 0 when the job
counts that code as success), or what the job said when it gave up, or 0
when every child stopped cleanly.

The loop never bails: a callback that raises (a watched fd's, a timer, a
child's exit hook) is logged once with its traceback and turns into the same
graceful stop, exit code 1 unless one is known; a callback registered as a
chore (the metrics endpoint) only costs a warning. Output hooks cannot raise
into the loop at all (relay.py swallows their errors: the output goes on), and
the loop's own turn is guarded too, so nothing PID 1 runs from here ends it.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import selectors
import signal
import time
from collections import deque
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Deque, Dict, Iterable, List, Optional, Sequence

from .. import log
from . import procfs
from .relay import LineRelay, enlarge_pipe
from .spawn import ALL_SIGNALS, ChildSpec, spawn

# Signals PID 1 must not pass on: the kernel sends SIGCHLD about our own children.
FORWARDED = [s for s in ALL_SIGNALS if s != signal.SIGCHLD and s < 32]
# Received by PID 1, these stop the job gracefully; every other signal is forwarded.
# SIGQUIT is forwarded by default: a JVM prints its threads on it, a shell dumps core.
DEFAULT_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What a child gets when the stop is PID 1's own (no signal received, no rewrite).
OWN_STOP_SIGNAL = signal.SIGTERM
INTERNAL_ERROR_CODE = 1


def signal_name(signum: int) -> str:
    """A signal as people read it, for PID 1's log lines and the training failure reason."""
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal, or a number no name covers
        return f"signal {signum}"


class ExitStatus:
    __slots__ = ("code", "signal")

    def __init__(self, code: int, signal: Optional[int] = None):
        self.code = code  # 0-255; 128+N when killed by signal N, as shells report it
        self.signal = signal

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExitStatus) and (self.code, self.signal) == (other.code, other.signal)

    def __repr__(self) -> str:
        return f"ExitStatus({self.code}, {self.signal})"

    @classmethod
    def from_wait(cls, status: int) -> "ExitStatus":
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            return cls(128 + sig, sig)
        return cls(os.WEXITSTATUS(status))

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by signal {self.signal} ({signal_name(self.signal)})"
        return f"exit code {self.code}"


class Child:
    """One entry of the table: the spec, the current pid, and its history."""

    def __init__(self, spec: ChildSpec, primary: bool):
        self.spec = spec
        self.primary = primary
        self.pid: Optional[int] = None
        self.started_at = 0.0
        self.exited_at = 0.0  # wall-clock time of the last exit (metrics report run times)
        self.restarts = 0
        self.status: Optional[ExitStatus] = None  # of the current run: None again once restarted
        self.last_exit: Optional[ExitStatus] = None  # of the last exit, kept across restarts (metrics)
        self.recent_exits: Deque[float] = deque()
        self.relays: List[LineRelay] = []

    @property
    def alive(self) -> bool:
        return self.pid is not None


class _Timer:
    def __init__(self, when: float, callback: Callable[[], None], chore: bool = False):
        self.when = when
        self.callback = callback
        self.chore = chore
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _give_pipes_to(credentials, *fds: int) -> None:
    """Let a child that reopens /dev/stdout or /dev/stderr by path (nginx's
    error_log, `echo > /dev/stderr`) do so: an anonymous pipe is mode 0600
    owned by its creator, PID 1, so it must belong to the child's user."""
    for fd in fds:
        try:
            os.fchown(fd, credentials.uid, credentials.gid)
        except OSError:
            pass  # PID 1 is not root: the pipe is already the child's user's


class Supervisor:
    def __init__(self, grace_period: float, restart_limit: int = 5, restart_window: float = 60.0,
                 stop_signals: Sequence[int] = DEFAULT_STOP_SIGNALS, rewrite_stop: Optional[int] = None,
                 success_codes: Iterable[int] = ()):
        self.grace_period = grace_period
        self.restart_limit = restart_limit
        self.restart_window = restart_window
        self.stop_signals = frozenset(stop_signals)
        # Sent instead of the stop signal to every child without a stop signal of its own
        # (dumb-init's --rewrite: SIGINT for code that checkpoints on KeyboardInterrupt).
        self.rewrite_stop = rewrite_stop
        # The primary child's exit codes that count as success (tini's -e: a JVM's 143).
        self.success_codes = frozenset(success_codes)
        self.children: List[Child] = []
        # Called once when stopping begins (a multi-model endpoint answers its pending loads).
        self.on_stop: Optional[Callable[[], None]] = None
        self.stopping = False
        self.exit_code: Optional[int] = None
        self._by_pid: Dict[int, Child] = {}
        self._signals: Deque[int] = deque()
        self._timers: List = []
        self._sequence = itertools.count()
        self._kill_timer: Optional[_Timer] = None
        self._leftovers_warned = False
        self._killed_everything = False
        self._failed = False  # a callback raised: its traceback is logged once
        self._chores: set = set()  # fds whose callbacks are chores (a failure only warns)
        self._selector = selectors.DefaultSelector()
        self._is_init = os.getpid() == 1
        self._install_signal_handlers()

    # ---- public API --------------------------------------------------------

    def start(self, spec: ChildSpec, primary: bool = False) -> Child:
        """Start a child now; raises SpawnError when the program cannot run."""
        child = Child(spec, primary)
        self._spawn(child)
        self.children.append(child)
        return child

    def forget(self, child: Child) -> None:
        """Drop an exited child from the table for good (a model unloaded at run time): a
        job that starts children on demand must not keep every one it ever ran."""
        if not child.alive and child in self.children:
            self.children.remove(child)

    # `chore=True`: the callback is not what the job exists for (the metrics endpoint): if it
    # raises, a warning, and the job carries on. Otherwise a raise stops the job gracefully.
    def call_later(self, delay: float, callback: Callable[[], None], chore: bool = False) -> _Timer:
        timer = _Timer(time.monotonic() + max(0.0, delay), callback, chore)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def add_reader(self, fd: int, callback: Callable[[], None], chore: bool = False) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)
        if chore:
            self._chores.add(fd)

    def remove_reader(self, fd: int) -> None:
        self._chores.discard(fd)
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def add_writer(self, fd: int, callback: Callable[[], None], chore: bool = False) -> None:
        """Call `callback` while `fd` can take more data (one watch per fd: remove its reader first)."""
        self._selector.register(fd, selectors.EVENT_WRITE, callback)
        if chore:
            self._chores.add(fd)

    def shutdown(self, reason: str, exit_code: Optional[int] = None) -> None:
        """Stop every child gracefully; `exit_code` overrides the primary's code."""
        if exit_code is not None and self.exit_code is None:
            self.exit_code = exit_code
        self._begin_stop(reason, None)

    def run(self) -> int:
        """Loop until every descendant is gone; return the job's exit code."""
        while True:
            try:
                self._dispatch(self._selector.select(self._next_timeout()))
                self._handle_signals()
                self._reap()
                self._run_due_timers()
                if self._finished():
                    break
            except Exception as error:  # the loop's own bug: still the graceful stop, never a bail
                self._callback_failed("the loop", error, False)
        self._selector.close()
        signal.set_wakeup_fd(-1)
        return self._final_code()

    # ---- signals -----------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ, self._drain_wakeup)
        handled = []
        for signum in FORWARDED + [signal.SIGCHLD]:
            try:
                signal.signal(signum, self._record_signal)
                handled.append(signum)
            except (OSError, ValueError):
                pass
        # A launcher may have left some of them blocked (the mask survives exec): a blocked
        # SIGCHLD would hide every exit, a blocked SIGTERM every `docker stop`. Signals
        # pending since then arrive now, and the handlers above record them.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)

    def _record_signal(self, signum: int, _frame) -> None:
        # A handler only records: acting here could re-enter the loop's state.
        self._signals.append(signum)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wakeup_read, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum == signal.SIGCHLD:
                continue  # _reap runs every turn of the loop anyway
            if signum in self.stop_signals:
                self._begin_stop(f"received {signal_name(signum)}", signum)
            else:
                log.debug(f"forwarding {signal_name(signum)}")
                for child in self._live_children():
                    self._signal_group(child, signum)

    def _signal_group(self, child: Child, signum: int) -> None:
        if child.pid is None:
            return
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            # The child left its group (job control); reach it directly.
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass
        except PermissionError:
            pass

    # ---- stopping ----------------------------------------------------------

    def _begin_stop(self, reason: str, received: Optional[int]) -> None:
        first = not self.stopping
        if first:
            self.stopping = True
            quiet = received is None and not self._live_children()
            (log.debug if quiet else log.info)(f"stopping ({reason}); grace period {self.grace_period:g} s")
            self._kill_timer = self.call_later(self.grace_period, self._kill_everything)
            if self.on_stop is not None:
                self._guarded(self.on_stop, "the job's stop hook")
        for child in self._live_children():
            self._signal_group(child, self._stop_signal_for(child, received))
        if not self._live_children():
            self._stop_leftovers()

    def _stop_signal_for(self, child: Child, received: Optional[int]) -> int:
        # A server's own graceful signal wins: what reaches it must be what drains it.
        if child.spec.stop_signal is not None:
            return child.spec.stop_signal
        if self.rewrite_stop is not None:
            return self.rewrite_stop
        return received if received is not None else OWN_STOP_SIGNAL

    def _stop_leftovers(self) -> None:
        """Descendants that outlived the children get SIGTERM once."""
        if self._leftovers_warned:
            return
        pids = self._all_descendants()
        if not pids:
            return
        self._leftovers_warned = True
        log.info(f"{len(pids)} leftover process(es) still running; sending SIGTERM")
        self._signal_everything(signal.SIGTERM)
        if self._kill_timer is None:
            self._kill_timer = self.call_later(self.grace_period, self._kill_everything)

    def _kill_everything(self) -> None:
        pids = self._all_descendants()
        if pids:
            names = ", ".join(f"{c.spec.role} (pid {c.pid})" for c in self._live_children()) or "leftovers"
            log.warning(f"grace period of {self.grace_period:g} s is over: SIGKILL to {len(pids)} process(es): {names}")
            self._signal_everything(signal.SIGKILL)
        self._killed_everything = True

    def _signal_everything(self, signum: int) -> None:
        for child in self._live_children():
            self._signal_group(child, signum)
        if self._is_init:
            try:
                os.kill(-1, signum)  # every process of the namespace but us
            except ProcessLookupError:
                pass
            return
        for pid in self._all_descendants():
            try:
                os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def _all_descendants(self) -> set:
        return procfs.descendants(os.getpid(), include_zombies=False)

    # ---- children ----------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        spec = child.spec
        launch = spec.spawner or spawn
        if not spec.relay:
            child.pid = launch(spec)
        else:
            out_read, out_write = os.pipe2(os.O_CLOEXEC)
            err_read, err_write = os.pipe2(os.O_CLOEXEC)
            for fd in (out_read, err_read):
                enlarge_pipe(fd)
            if spec.credentials is not None:
                _give_pipes_to(spec.credentials, out_write, err_write)
            try:
                child.pid = launch(spec, out_write, err_write)
            except BaseException:
                for fd in (out_read, err_read):
                    os.close(fd)
                raise
            finally:
                os.close(out_write)
                os.close(err_write)
            child.relays = [LineRelay(out_read, 1, spec.on_stdout), LineRelay(err_read, 2, spec.on_stderr)]
            for relay in child.relays:
                self._selector.register(relay.source, selectors.EVENT_READ, self._pump(relay))
        child.started_at = time.time()
        child.status = None
        self._by_pid[child.pid] = child
        if log.enabled("debug"):
            from .. import redact  # its patterns cost PID 1 memory: only when debug lines are written

            log.debug(f"started {spec.role} (pid {child.pid}): {' '.join(redact.argv(spec.argv))}")

    def _pump(self, relay: LineRelay) -> Callable[[], None]:
        def on_readable() -> None:
            if not relay.pump():
                self._close_relay(relay)

        return on_readable

    def _close_relay(self, relay: LineRelay) -> None:
        # Unregister before closing: a reused fd number must not find a stale key.
        self.remove_reader(relay.source)
        relay.close()

    def _reap(self) -> None:
        # SIGCHLD coalesces: reap until nothing is left to reap.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            child = self._by_pid.pop(pid, None)
            if child is None:
                log.debug(f"reaped orphan pid {pid}")
                continue
            self._child_exited(child, ExitStatus.from_wait(status))

    def _child_exited(self, child: Child, status: ExitStatus) -> None:
        child.pid = None
        child.status = child.last_exit = status
        child.exited_at = time.time()
        self._drain_relays(child)
        expected = status.code == 0 or (child.primary and status.code in self.success_codes)
        level = log.info if expected or self.stopping else log.warning
        level(f"{child.spec.role} exited: {status.describe()}")
        hook = child.spec.on_exit
        if hook is not None:
            self._guarded(lambda: hook(child, status), f"the exit hook of {child.spec.role}")
        if child.primary:
            if self.exit_code is None:
                self.exit_code = status.code
                if status.code in self.success_codes:
                    log.info(f"exit code {status.code} counts as success (SMSUPER_SUCCESS_EXIT_CODES): exit 0")
                    self.exit_code = 0
            self._begin_stop(f"{child.spec.role} exited", None)
        elif child.spec.restart and not self.stopping:
            self._schedule_restart(child, status)
        elif not self._live_children() and not self.stopping:
            self._begin_stop("no child left", None)
        if self.stopping and not self._live_children():
            self._stop_leftovers()

    def _drain_relays(self, child: Child) -> None:
        # Whatever the child wrote before dying is read now, so its last lines
        # come out before the line announcing its exit.
        for relay in child.relays:
            if relay.open and not relay.pump():
                self._close_relay(relay)

    def _schedule_restart(self, child: Child, status: ExitStatus) -> None:
        now = time.monotonic()
        child.recent_exits.append(now)
        while child.recent_exits and now - child.recent_exits[0] > self.restart_window:
            child.recent_exits.popleft()
        if len(child.recent_exits) > self.restart_limit:
            self.shutdown(
                f"{child.spec.role} exited {len(child.recent_exits)} times within "
                f"{self.restart_window:g} s (last: {status.describe()}); giving up",
                exit_code=1,
            )
            log.error(f"{child.spec.role} keeps failing ({status.describe()}); the job stops")
            return
        delay = min(5.0, 0.1 * (2 ** (len(child.recent_exits) - 1)))
        log.info(f"restarting {child.spec.role} in {delay:.1f} s")
        self.call_later(delay, lambda: self._restart(child))

    def _restart(self, child: Child) -> None:
        if self.stopping:
            return
        for relay in child.relays:
            if relay.open:
                self._close_relay(relay)
        try:
            self._spawn(child)
            child.restarts += 1
        except Exception as failure:  # SpawnError or OSError: count it as another exit
            log.error(f"cannot restart {child.spec.role}: {failure}")
            self._schedule_restart(child, ExitStatus(getattr(failure, "exit_code", 1)))

    def _live_children(self) -> List[Child]:
        return [c for c in self.children if c.alive]

    # ---- the loop's plumbing -----------------------------------------------

    def _dispatch(self, events) -> None:
        for key, _ in events:
            if not self._guarded(key.data, f"the callback for fd {key.fd}", key.fd in self._chores):
                self._drop_watch(key.fd)

    def _drop_watch(self, fd: int) -> None:
        """A callback that raised is not called again for this fd: a readable fd would spin the loop."""
        for child in self.children:
            for relay in child.relays:
                if relay.open and relay.source == fd:
                    self._close_relay(relay)  # so the loop does not wait for its EOF
                    return
        self.remove_reader(fd)

    def _guarded(self, callback: Callable[[], None], what: str, chore: bool = False) -> bool:
        """Run one callback; PID 1 must not bail whatever it raises. False if it raised."""
        try:
            callback()
            return True
        except Exception as error:
            self._callback_failed(what, error, chore)
            return False

    def _callback_failed(self, what: str, error: Exception, chore: bool) -> None:
        import traceback

        detail = traceback.format_exc().rstrip()
        if chore:
            log.warning(f"{what} failed ({type(error).__name__}: {error}); the job carries on without it\n{detail}")
            return
        if not self._failed:
            self._failed = True
            log.error(f"internal error in {what}: {type(error).__name__}: {error}; stopping gracefully\n{detail}")
        else:
            log.error(f"internal error in {what} again: {type(error).__name__}: {error}")
        if self.stopping:  # the children have their stop signal already
            if self.exit_code is None:
                self.exit_code = INTERNAL_ERROR_CODE
            return
        self.shutdown(f"internal error in {what}", exit_code=INTERNAL_ERROR_CODE)

    def _next_timeout(self) -> Optional[float]:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guarded(timer.callback, "a timer", timer.chore)

    def _finished(self) -> bool:
        if not self.stopping or self._live_children():
            return False
        if any(r.open for c in self.children for r in c.relays):
            return False
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True  # nothing below us is left, reaped or alive
        if pid:
            child = self._by_pid.pop(pid, None)
            if child is not None:
                self._child_exited(child, ExitStatus.from_wait(status))
        return False

    def _final_code(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        for child in self.children:
            if child.status is not None and child.status.code != 0:
                return child.status.code
        return 0
