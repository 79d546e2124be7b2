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

from helpers import (WAIT_LIMIT, background, children_of, eventually, free_port, in_flight, in_namespace, init_pid,
                     nginx_writing, train_environment, train_layout)

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
    """`unshare --pid --fork --mount-proc COMMAND...`: COMMAND as PID 1 of a new PID namespace."""

    def __init__(self, command: List[str], env: dict, tmp_path: Path):
        self.stdout_path = tmp_path / "init-stdout.txt"
        self.stderr_path = tmp_path / "init-stderr.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(in_namespace(*command),
                                         env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def pid(self) -> int:
        """The host's pid of the namespace's PID 1 (unshare's only child)."""
        return init_pid(self.proc.pid)

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
    """init(*args, env=, prefix=): `[prefix...] python PYZ ARGS...` as PID 1; init(command=[...]): any PID 1."""
    started: List[Init] = []

    def start(*args: str, env: dict = None, prefix: tuple = (), command: List[str] = None) -> Init:
        argv = command or [*prefix, sys.executable, str(pyz), *args]
        instance = Init(argv, dict(base_env, **(env or {})), tmp_path)
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


@pytest.mark.slow
def test_started_with_sigterm_blocked_sigterm_is_forwarded_and_the_grace_period_runs(init, launcher, stubborn):
    job = init(sys.executable, stubborn, env={"SMSUPER_GRACE_PERIOD": "2"}, prefix=launcher)
    job.wait_for("ready")
    os.kill(job.pid(), signal.SIGTERM)
    job.wait_for("got SIGTERM")
    # The child ignores it: the grace period ends in SIGKILL, as `docker stop` expects of PID 1.
    assert job.wait() == 128 + signal.SIGKILL, job.stderr()
    assert "grace period of 2 s is over" in job.stderr()


# ---- serve: every stop signal drains ------------------------------------------------------------

needs_nginx = pytest.mark.skipif(not HAS_NGINX, reason="nginx is not installed (scripts/install-test-deps.sh)")


@pytest.mark.slow
@needs_nginx
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_sigint_and_sigquit_complete_every_request_in_flight_like_sigterm(serve, signum):
    metrics_port = free_port()
    server = serve(SMSUPER_METRICS_PORT=str(metrics_port))
    server.wait_ready()
    # Two requests hold both workers; two more wait in gunicorn's socket backlog.
    requests_ = [background(lambda: server.post({"gate": True})) for _ in range(4)]
    eventually(lambda: in_flight(server.base) == 2, "both workers to be busy")
    eventually(lambda: nginx_writing(metrics_port) >= 5, "nginx to hold the four requests")
    os.kill(server.init_pid(), signum)
    eventually(lambda: f"received {signal.Signals(signum).name}" in server.stderr(), "smsuper to take the signal")
    (server.base / "open").touch()
    answers = [r() for r in requests_]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert all(a.json()["gated"] for a in answers)
    assert server.proc.wait(timeout=WAIT_LIMIT) == 0, server.stderr()


# ---- SMSUPER_STOP_SIGNAL: the stop signal rewritten --------------------------------------------

CHECKPOINTS_ON_KEYBOARD_INTERRUPT = """
import sys, time
print("ready", flush=True)
try:
    while True:
        time.sleep(0.05)
except KeyboardInterrupt:
    print("checkpoint written", flush=True)
    sys.exit(5)
"""


def test_stop_signal_rewrite_gives_the_command_sigint_for_sigterm(init, tmp_path):
    program = tmp_path / "checkpointing.py"
    program.write_text(CHECKPOINTS_ON_KEYBOARD_INTERRUPT)
    job = init(sys.executable, str(program), env={"SMSUPER_STOP_SIGNAL": "SIGINT"})
    job.wait_for("ready")
    os.kill(job.pid(), signal.SIGTERM)
    assert job.wait() == 5, job.stderr()
    assert "checkpoint written" in job.stdout()


@pytest.mark.slow
def test_stop_signal_rewrite_still_ends_in_sigkill_after_the_grace_period(init, stubborn):
    job = init(sys.executable, stubborn, env={"SMSUPER_STOP_SIGNAL": "INT", "SMSUPER_GRACE_PERIOD": "2"})
    job.wait_for("ready")
    os.kill(job.pid(), signal.SIGTERM)
    job.wait_for("got SIGINT")
    assert job.wait() == 128 + signal.SIGKILL, job.stderr()
    assert "got SIGTERM" not in job.stdout()
    assert "grace period of 2 s is over" in job.stderr()


def test_stop_signal_rewrite_reaches_the_training_script(init, tmp_path):
    base = train_layout(tmp_path / "ml", CHECKPOINTS_ON_KEYBOARD_INTERRUPT)
    env = train_environment({}, base, SAGEMAKER_PROGRAM="train.py", SMSUPER_STOP_SIGNAL="SIGINT")
    job = init("train", env=env)
    job.wait_for("ready")
    os.kill(job.pid(), signal.SIGTERM)
    assert job.wait() == 5, job.stderr()
    assert "checkpoint written" in job.stdout()
    assert "train.py exited with code 5." in (base / "output" / "failure").read_text()


def test_a_bad_stop_signal_stops_at_start_naming_the_setting(pyz, base_env):
    result = subprocess.run([sys.executable, str(pyz), "true"], env=dict(base_env, SMSUPER_STOP_SIGNAL="SIGKIL"),
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "SMSUPER_STOP_SIGNAL" in result.stderr and "signal name" in result.stderr


# ---- SMSUPER_SUCCESS_EXIT_CODES ----------------------------------------------------------------

@pytest.mark.parametrize("command, expected", [
    ("exit 143", 0),  # a JVM's answer to SIGTERM
    ("kill -TERM $$", 0),  # 143 as well: death by SIGTERM
    ("exit 3", 3),  # any other code is kept
], ids=["exit-143", "killed-by-sigterm", "exit-3"])
def test_success_exit_codes_become_exit_0(init, command, expected):
    job = init("sh", "-c", command, env={"SMSUPER_SUCCESS_EXIT_CODES": "143"})
    assert job.wait() == expected, job.stderr()


def test_success_exit_codes_make_a_training_job_succeed(init, tmp_path):
    base = train_layout(tmp_path / "ml", "import sys\nsys.exit(143)\n")
    env = train_environment({}, base, SAGEMAKER_PROGRAM="train.py", SMSUPER_SUCCESS_EXIT_CODES="1,143")
    job = init("train", env=env)
    assert job.wait() == 0, job.stderr()
    assert (base / "output" / "success").exists()
    assert not (base / "output" / "failure").exists()


def test_bad_success_exit_codes_stop_at_start_naming_the_setting(pyz, base_env):
    result = subprocess.run([sys.executable, str(pyz), "true"],
                            env=dict(base_env, SMSUPER_SUCCESS_EXIT_CODES="143,300"), capture_output=True, text=True)
    assert result.returncode == 2
    assert "SMSUPER_SUCCESS_EXIT_CODES" in result.stderr


# ---- a program the workload's user cannot reach: 126, not "not found" --------------------------

@pytest.fixture()
def private(tmp_path) -> Path:
    """A directory only root may enter (like root's home), holding an executable `prog`."""
    directory = tmp_path / "private"
    directory.mkdir(mode=0o700)
    program = directory / "prog"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o755)
    return directory


@pytest.fixture()
def open_dir():
    """A directory everyone may enter, outside pytest's root-only tree."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="smsuper-signals-"))
    directory.chmod(0o755)
    yield directory
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def run_as_nobody(pyz: Path, base_env: dict, *command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(pyz), *command], env=dict(base_env, SMSUPER_USER="nobody", **env),
                          cwd="/", capture_output=True, text=True, timeout=WAIT_LIMIT)


def first_closed_directory(path: Path) -> str:
    """The first directory on the way to `path` that others may not enter."""
    for parent in reversed(path.parents):
        if not parent.stat().st_mode & 0o001:
            return str(parent)
    raise AssertionError(f"every directory above {path} is open")


def assert_names_path_user_and_fix(stderr: str, path: str, closed: str) -> None:
    lines = stderr.strip().splitlines()
    message = [line for line in lines if path in line]
    assert message, stderr
    assert "permission denied" in message[0] and "nobody" in message[0], message[0]
    assert closed in message[0] and f"chmod o+x {closed}" in message[0], message[0]
    assert "SMSUPER_USER" in message[0], message[0]


def test_a_program_under_a_closed_directory_is_126_naming_path_user_and_fix(pyz, base_env, private):
    program = private / "prog"
    result = run_as_nobody(pyz, base_env, str(program))
    assert result.returncode == 126, result.stderr
    assert_names_path_user_and_fix(result.stderr, str(program), first_closed_directory(program))


def test_a_program_found_on_path_under_a_closed_directory_is_126(pyz, base_env, private):
    result = run_as_nobody(pyz, base_env, "prog", PATH=f"{private}:{base_env['PATH']}")
    assert result.returncode == 126, result.stderr
    assert_names_path_user_and_fix(result.stderr, str(private / "prog"), first_closed_directory(private / "prog"))


def test_a_program_on_no_path_is_still_127_even_past_a_closed_path_directory(pyz, base_env, private):
    result = run_as_nobody(pyz, base_env, "no-such-program-xyz", PATH=f"{private}:{base_env['PATH']}")
    assert result.returncode == 127, result.stderr
    assert "no-such-program-xyz: not found" in result.stderr


def test_a_script_whose_interpreter_is_under_a_closed_directory_is_126(pyz, base_env, private, open_dir):
    interpreter = private / "sh"
    interpreter.symlink_to("/bin/sh")
    script = open_dir / "job.sh"
    script.write_text(f"#!{interpreter}\necho ran\n")
    script.chmod(0o755)
    result = run_as_nobody(pyz, base_env, str(script))
    assert result.returncode == 126, result.stderr
    assert_names_path_user_and_fix(result.stderr, str(interpreter), first_closed_directory(interpreter))
    assert str(script) in result.stderr


def test_a_file_the_user_may_not_execute_is_126_naming_its_mode(pyz, base_env, open_dir):
    program = open_dir / "prog"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o700)
    result = run_as_nobody(pyz, base_env, str(program))
    assert result.returncode == 126, result.stderr
    assert str(program) in result.stderr and "nobody" in result.stderr and "0700" in result.stderr
    assert f"chmod o+rx {program}" in result.stderr, result.stderr



# ---- serve: SIGHUP reloads the workers gracefully ----------------------------------------------

def metric(metrics_port: int, name: str) -> float:
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} is not in the scrape:\n{text}"
    return float(found.group(1))


class PingWatch(threading.Thread):
    """Asks /ping over and over, keeping every answer that was not a 200."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.done = threading.Event()
        self.asked = 0
        self.bad: List[str] = []

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status = str(requests.get(self.url, timeout=10).status_code)
            except requests.RequestException as error:
                status = type(error).__name__
            self.asked += 1
            if status != "200":
                self.bad.append(status)
            time.sleep(0.02)

    def stop(self) -> None:
        self.done.set()
        self.join(WAIT_LIMIT)


@pytest.mark.slow
@needs_nginx
def test_sighup_replaces_the_workers_without_a_restart_or_a_lost_request(serve):
    metrics_port = free_port()
    server = serve(SMSUPER_METRICS_PORT=str(metrics_port))
    server.wait_ready()
    master = server.gunicorn_master()
    nginx_master = server.child("nginx: master")
    # /ping is 200 once one worker has loaded the model; the other may still be forking.
    eventually(lambda: len(children_of(master)) == 2, "both workers")
    old_workers = set(children_of(master))
    held = background(lambda: server.post({"gate": True}))
    eventually(lambda: in_flight(server.base) == 1, "a request to reach a worker")
    watch = PingWatch(server.url("/ping"))
    watch.start()
    os.kill(server.init_pid(), signal.SIGHUP)
    # A new generation of two workers, ready to serve while the old busy one finishes.
    eventually(lambda: len(set(children_of(master)) - old_workers) == 2, "two new workers")
    (server.base / "open").touch()
    answer = held()
    assert answer.status_code == 200 and answer.json()["gated"], answer.text
    eventually(lambda: not (set(children_of(master)) & old_workers), "every old worker to go")
    for value in range(4):
        assert server.post([value]).json() == [value]
    watch.stop()
    assert watch.asked > 0 and watch.bad == [], watch.bad
    # The same servers: nothing died, nothing was restarted or counted as a restart.
    assert server.gunicorn_master() == master and server.child("nginx: master") == nginx_master
    assert server.proc.poll() is None
    logged = server.stderr()
    assert "gunicorn exited" not in logged and "restarting" not in logged, logged
    assert metric(metrics_port, "smsuper_worker_restarts_total") == 0
    assert server.terminate() == 0, server.stderr()


# ---- the loop never bails -----------------------------------------------------------------------

# PID 1 is a small job on smsuper's own supervisor (imported from the pyz): its primary child
# drains on SIGTERM (the grace period lets it finish), and one of the job's callbacks raises.
FAULTY_JOB = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from smsuper import log
from smsuper.init.spawn import ChildSpec
from smsuper.init.supervisor import Supervisor

DRAINING = '''
import signal, sys, time
def drain(signum, frame):
    print("draining", flush=True)
    time.sleep(1)
    print("drained", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, drain)
print("ready", flush=True)
while True:
    time.sleep(0.05)
'''

def broken():
    raise RuntimeError("a bug in a callback")

fault = sys.argv[2]
log.configure("info", "text")
supervisor = Supervisor(grace_period=30)

def when_ready(chunk):
    # The fault strikes once the child can drain (its SIGTERM handler is set).
    if b"ready" not in chunk:
        return
    if fault == "exit-hook":
        supervisor.start(ChildSpec(role="helper", argv=["true"], on_exit=lambda child, status: broken()))
    elif fault == "timer":
        supervisor.call_later(0.1, broken)
    elif fault == "reader":
        read_end, write_end = os.pipe()
        supervisor.add_reader(read_end, broken)
        os.write(write_end, b"x")
    elif fault == "chore":
        supervisor.call_later(0.1, broken, chore=True)
        supervisor.call_later(0.5, lambda: supervisor.shutdown("the job is done"))

supervisor.start(ChildSpec(role="worker", argv=[sys.executable, "-c", DRAINING], relay=True, on_stdout=when_ready),
                 primary=True)
sys.exit(supervisor.run())
"""


@pytest.fixture()
def faulty_job(init, pyz, tmp_path) -> Callable[[str], Init]:
    program = tmp_path / "faulty_job.py"
    program.write_text(FAULTY_JOB)
    return lambda fault: init(command=[sys.executable, str(program), str(pyz), fault])


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["exit-hook", "timer", "reader"])
def test_a_callback_that_raises_is_logged_once_and_stops_gracefully(faulty_job, fault):
    job = faulty_job(fault)
    assert job.wait() == 1, job.stderr()  # the child stopped cleanly, but the job failed
    assert job.stdout().splitlines()[-2:] == ["draining", "drained"], job.stdout()  # the grace period held
    logged = job.stderr()
    assert logged.count("Traceback (most recent call last)") == 1, logged
    assert "RuntimeError: a bug in a callback" in logged and "stopping gracefully" in logged
    assert "SIGKILL" not in logged


@pytest.mark.slow
def test_a_chore_that_raises_only_warns(faulty_job):
    job = faulty_job("chore")
    assert job.wait() == 0, job.stderr()
    logged = job.stderr()
    assert "WARNING" in logged and "RuntimeError: a bug in a callback" in logged and "carries on" in logged
    assert "stopping (the job is done)" in logged
    assert "drained" in job.stdout()



def test_a_program_on_a_noexec_mount_is_126_naming_the_mount(pyz, base_env, open_dir):
    mount = open_dir / "noexec"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,mode=755", "tmpfs", str(mount)], check=True)
    try:
        program = mount / "prog"
        program.write_text("#!/bin/sh\necho ran\n")
        program.chmod(0o755)
        result = run_as_nobody(pyz, base_env, str(program))
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert result.returncode == 126, result.stderr
    assert str(program) in result.stderr and "nobody" in result.stderr and "noexec" in result.stderr
    assert "chmod" not in result.stderr, result.stderr
