"""Signals as a user of smsuper meets them: each has one documented, graceful meaning.

Every case runs the built pyz as PID 1 of a new PID namespace (`unshare --pid --fork
--mount-proc`); the serving cases run real nginx in front of real gunicorn. Waits are
for conditions, with generous limits that only a hang reaches.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, List

import pytest
import requests

try:  # tests/ as a package or as a rootdir on sys.path
    from .test_serve import (GATED_MODEL, WAIT_LIMIT, background, children_of, eventually, free_port,
                             in_flight, nginx_writing, serve, title_of)  # noqa: F401  (serve: fixture)
except ImportError:
    from test_serve import (GATED_MODEL, WAIT_LIMIT, background, children_of, eventually,  # type: ignore
                            free_port, in_flight, nginx_writing, serve, title_of)  # noqa: F401

HAS_NGINX = os.path.exists("/usr/sbin/nginx")

# Starts the rest of its argv with these signals blocked, as a careless launcher would.
BLOCKING_LAUNCHER = """
import os, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                                          signal.SIGHUP, signal.SIGUSR1})
os.execv(sys.argv[1], sys.argv[1:])
"""

# Says which signal reached it, then goes on; exits with 40+N on SIGUSR1 so a test can end it.
STUBBORN_CHILD = """
import signal, sys, time
def report(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
    signal.signal(s, report)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


class Init:
    """`unshare --pid --fork --mount-proc [prefix...] python PYZ ARGS...`: smsuper as PID 1."""

    def __init__(self, pyz: Path, env: dict, tmp_path: Path, *args: str, prefix: tuple = ()):
        self.stdout_path = tmp_path / "init-stdout.txt"
        self.stderr_path = tmp_path / "init-stderr.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *prefix, sys.executable,
                 str(pyz), *args], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def pid(self) -> int:
        """The host's pid of the namespace's PID 1 (unshare's only child)."""
        eventually(lambda: bool(children_of(self.proc.pid)), "PID 1 to start")
        return children_of(self.proc.pid)[0]

    def wait_for(self, text: str) -> None:
        def seen() -> bool:
            if text in self.stdout():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}:\n{self.stderr()}")
            return False

        eventually(seen, f"{text!r} on stdout")

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=WAIT_LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"smsuper hung:\nstdout: {self.stdout()}\nstderr: {self.stderr()}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # --kill-child takes the whole namespace with it
            self.proc.wait(timeout=WAIT_LIMIT)


@pytest.fixture()
def init(pyz, base_env, tmp_path):
    started: List[Init] = []

    def start(*args: str, env: dict = None, prefix: tuple = ()) -> Init:
        instance = Init(pyz, dict(base_env, **(env or {})), tmp_path, *args, prefix=prefix)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.close()


@pytest.fixture()
def launcher(tmp_path) -> tuple:
    path = tmp_path / "launcher.py"
    path.write_text(BLOCKING_LAUNCHER)
    return (sys.executable, str(path))


@pytest.fixture()
def stubborn(tmp_path) -> str:
    path = tmp_path / "stubborn.py"
    path.write_text(STUBBORN_CHILD)
    return str(path)


# ---- a launcher that leaked a blocked signal mask ----------------------------------------------

def test_started_with_sigchld_blocked_the_exit_is_still_seen(init, launcher):
    job = init("sh", "-c", "exit 3", prefix=launcher)
    assert job.wait() == 3, job.stderr()


def test_started_with_sigterm_blocked_sigterm_is_forwarded_and_the_grace_period_runs(init, launcher, stubborn):
    job = init(sys.executable, stubborn, env={"SMSUPER_GRACE_PERIOD": "2"}, prefix=launcher)
    job.wait_for("ready")
    os.kill(job.pid(), signal.SIGTERM)
    job.wait_for("got SIGTERM")
    # The child ignores it: the grace period ends in SIGKILL, as `docker stop` expects of PID 1.
    assert job.wait() == 128 + signal.SIGKILL, job.stderr()
    assert "grace period of 2 s is over" in job.stderr()
