"""PID 1's loop (smsuper/init/supervisor.py) driven through its own API, in-process.

Each case builds a Supervisor of the source tree, starts real children (sh) under it and runs
its loop, in a process of its own forked from the test: the loop reaps with waitpid(-1), which
inside pytest would steal the exit codes of every other child pytest has, and it installs
handlers for every signal. The forked process is a child subreaper, as smsuper makes itself
when it is not PID 1, so orphans come back to the loop. The test gets back what the loop
returned, what the children said through the relay, and what PID 1 logged.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import selectors
import signal
import tempfile
import traceback
from typing import Callable, List

import pytest

from helpers import WAIT_LIMIT, descendants

from smsuper import log
from smsuper.init.spawn import ChildSpec
from smsuper.init.supervisor import ExitStatus, Supervisor

PR_SET_CHILD_SUBREAPER = 36


class Outcome:
    def __init__(self, value, logged: str):
        self.value = value
        self.logged = logged


def in_a_fork(job: Callable[[], object], limit: float = WAIT_LIMIT) -> Outcome:
    """Run `job` in a forked process (a subreaper, logging to a file); its result and its log."""
    read_end, write_end = os.pipe()
    log_file = tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:  # the forked process: never returns into pytest
        try:
            os.close(read_end)
            os.dup2(log_file.fileno(), 2)
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            log.configure("debug", "text")
            result = ("value", job())
        except BaseException:
            result = ("error", traceback.format_exc())
        try:
            os.write(write_end, pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    selector = selectors.DefaultSelector()
    selector.register(read_end, selectors.EVENT_READ)
    try:
        while True:
            if not selector.select(limit):
                for stuck in [*descendants(pid), pid]:
                    os.kill(stuck, signal.SIGKILL)
                raise AssertionError("the supervisor's loop hung")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        selector.close()
        os.close(read_end)
        os.waitpid(pid, 0)
    log_file.seek(0)
    logged = log_file.read().decode(errors="replace")
    log_file.close()
    kind, value = pickle.loads(data)
    if kind == "error":
        raise AssertionError(f"in the forked supervisor:\n{value}\nlog:\n{logged}")
    return Outcome(value, logged)


def shell(role: str, script: str, lines: List[bytes] = None, on_line: Callable[[bytes], None] = None,
          **spec) -> ChildSpec:
    """`sh -c SCRIPT` whose stdout is relayed; each chunk also lands in `lines` and goes to `on_line`."""
    def seen(chunk: bytes) -> None:
        if lines is not None:
            lines.append(chunk)
        if on_line is not None:
            on_line(chunk)

    return ChildSpec(role=role, argv=["sh", "-c", script], relay=True, on_stdout=seen, **spec)


def nothing_left_below() -> bool:
    """True when this process has no child at all, alive or a zombie."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


# ---- exit codes ---------------------------------------------------------------------------------

def test_every_wait_status_becomes_the_code_a_shell_would_report():
    # What waitpid says, for each of the 256 exit codes and each signal, as the loop turns it into
    # the job's exit code: N, or 128+N for a signal (tests/test_init.py runs all 256 through the pyz).
    for code in range(256):
        assert ExitStatus.from_wait(code << 8) == ExitStatus(code)
    for signum in range(1, 32):
        assert ExitStatus.from_wait(signum) == ExitStatus(128 + signum, signum)


@pytest.mark.parametrize("command, expected", [
    *[(f"exit {code}", code) for code in (0, 1, 2, 126, 127, 128, 200, 255)],
    *[(f"kill -{int(signum)} $$", 128 + signum) for signum in (signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM)],
])
def test_the_primary_childs_exit_code_is_the_loops(command, expected):
    def job():
        supervisor = Supervisor(grace_period=5)
        supervisor.start(ChildSpec(role="command", argv=["sh", "-c", command]), primary=True)
        return supervisor.run()

    assert in_a_fork(job).value == expected


def test_a_success_code_counts_as_zero():
    def job():
        supervisor = Supervisor(grace_period=5, success_codes=[143])
        supervisor.start(ChildSpec(role="command", argv=["sh", "-c", "exit 143"]), primary=True)
        return supervisor.run()

    outcome = in_a_fork(job)
    assert outcome.value == 0
    assert "exit code 143 counts as success" in outcome.logged


# ---- signals ------------------------------------------------------------------------------------

def test_a_signal_received_is_forwarded_to_the_childs_process_group():
    def job():
        lines: List[bytes] = []

        def when_ready(chunk: bytes) -> None:
            if b"ready" in chunk:
                os.kill(os.getpid(), signal.SIGUSR1)  # as if sent to PID 1 from outside

        supervisor = Supervisor(grace_period=5)
        supervisor.start(shell("command", "trap 'echo got-usr1; exit 7' USR1; echo ready; "
                                          "while :; do sleep 0.05; done", lines, when_ready), primary=True)
        return supervisor.run(), b"".join(lines)

    code, said = in_a_fork(job).value
    assert code == 7
    assert b"got-usr1" in said


@pytest.mark.parametrize("rewrite, expected", [(None, "TERM"), (signal.SIGINT, "INT")], ids=["as-is", "rewritten"])
def test_a_stop_signal_stops_the_children_with_it_or_its_rewrite(rewrite, expected):
    def job():
        lines: List[bytes] = []

        def when_ready(chunk: bytes) -> None:
            if b"ready" in chunk:
                os.kill(os.getpid(), signal.SIGTERM)

        supervisor = Supervisor(grace_period=30, rewrite_stop=rewrite)
        supervisor.start(shell("command", "trap 'echo got-TERM; exit 3' TERM; trap 'echo got-INT; exit 4' INT; "
                                          "echo ready; while :; do sleep 0.05; done", lines, when_ready), primary=True)
        return supervisor.run(), b"".join(lines)

    outcome = in_a_fork(job)
    code, said = outcome.value
    assert f"got-{expected}".encode() in said
    assert code == {"TERM": 3, "INT": 4}[expected]
    assert "stopping (received SIGTERM)" in outcome.logged


def test_a_child_that_ignores_the_stop_is_killed_when_the_grace_period_ends():
    def job():
        def when_ready(chunk: bytes) -> None:
            if b"ready" in chunk:
                os.kill(os.getpid(), signal.SIGTERM)

        supervisor = Supervisor(grace_period=0.5)
        supervisor.start(shell("command", "trap '' TERM; echo ready; while :; do sleep 0.05; done",
                               on_line=when_ready), primary=True)
        return supervisor.run()

    outcome = in_a_fork(job)
    assert outcome.value == 128 + signal.SIGKILL
    assert "grace period of 0.5 s is over: SIGKILL" in outcome.logged


# ---- reaping ------------------------------------------------------------------------------------

def test_orphans_are_reaped_and_leftovers_stopped_before_the_loop_ends():
    def job():
        supervisor = Supervisor(grace_period=5)
        # Ten orphans that exit soon, and one that would run for five minutes.
        supervisor.start(ChildSpec(role="command", argv=[
            "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 0.1 & done; sleep 300 & exit 6"]), primary=True)
        code = supervisor.run()
        return code, nothing_left_below()

    outcome = in_a_fork(job)
    code, clean = outcome.value
    assert code == 6  # the leftovers' SIGTERM does not change the job's code
    assert clean, "a child of the supervisor's process was still there, alive or a zombie"
    assert "reaped orphan pid" in outcome.logged
    assert "leftover process(es) still running; sending SIGTERM" in outcome.logged


def test_a_restarted_child_that_keeps_failing_stops_the_job():
    def job():
        supervisor = Supervisor(grace_period=5, restart_limit=2, restart_window=60)
        flaky = supervisor.start(ChildSpec(role="server", argv=["sh", "-c", "exit 5"], restart=True))
        supervisor.start(shell("command", "trap 'exit 0' TERM; while :; do sleep 0.05; done"), primary=True)
        return supervisor.run(), flaky.restarts

    outcome = in_a_fork(job)
    code, restarts = outcome.value
    assert code == 1 and restarts == 2
    assert "server keeps failing (exit code 5); the job stops" in outcome.logged


# ---- the loop never bails -----------------------------------------------------------------------

def broken() -> None:
    raise RuntimeError("a bug in a callback")


# Drains on SIGTERM: says so and exits 0, so a graceful stop is told apart from a SIGKILL.
DRAINING = "trap 'echo draining; exit 0' TERM; echo ready; while :; do sleep 0.05; done"


@pytest.mark.parametrize("fault", ["timer", "reader", "exit-hook", "stop-hook"])
def test_a_callback_that_raises_is_logged_once_and_becomes_a_graceful_stop(fault):
    def job():
        lines: List[bytes] = []
        supervisor = Supervisor(grace_period=30)

        def when_ready(chunk: bytes) -> None:
            if b"ready" not in chunk:
                return
            if fault == "timer":
                supervisor.call_later(0, broken)
            elif fault == "reader":
                read_end, write_end = os.pipe()
                supervisor.add_reader(read_end, broken)
                os.write(write_end, b"x")
            elif fault == "exit-hook":
                supervisor.start(ChildSpec(role="helper", argv=["true"], on_exit=lambda child, status: broken()))
            elif fault == "stop-hook":
                supervisor.on_stop = broken
                supervisor.call_later(0, lambda: supervisor.shutdown("the job asked"))

        primary = supervisor.start(shell("command", DRAINING, lines, when_ready), primary=True)
        code = supervisor.run()
        return code, primary.status.code, b"".join(lines)

    outcome = in_a_fork(job)
    code, child_code, said = outcome.value
    assert code == 1  # the job failed: PID 1 hit a bug
    assert child_code == 0 and b"draining" in said  # yet the child got its graceful stop
    assert outcome.logged.count("Traceback (most recent call last)") == 1, outcome.logged
    assert "RuntimeError: a bug in a callback" in outcome.logged and "stopping gracefully" in outcome.logged
    assert "SIGKILL" not in outcome.logged


def test_a_callback_that_raises_while_stopping_keeps_the_exit_code_already_known():
    def job():
        supervisor = Supervisor(grace_period=30)
        # The primary exits 3; stopping the other child takes a moment, in which a timer raises.
        supervisor.on_stop = lambda: supervisor.call_later(0, broken)
        supervisor.start(shell("helper", "trap 'sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done"))
        supervisor.start(ChildSpec(role="command", argv=["sh", "-c", "sleep 0.2; exit 3"]), primary=True)
        return supervisor.run()

    outcome = in_a_fork(job)
    assert outcome.value == 3
    assert "internal error in a timer" in outcome.logged


def test_a_chore_that_raises_only_warns_and_the_job_carries_on():
    def job():
        supervisor = Supervisor(grace_period=30)
        supervisor.call_later(0, broken, chore=True)
        supervisor.start(ChildSpec(role="command", argv=["sh", "-c", "sleep 0.3; exit 0"]), primary=True)
        return supervisor.run()

    outcome = in_a_fork(job)
    assert outcome.value == 0
    assert "a timer failed (RuntimeError: a bug in a callback); the job carries on without it" in outcome.logged
