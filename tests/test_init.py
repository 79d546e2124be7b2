"""The init as a user of `python smsuper.pyz CMD` sees it: signals, exit codes, reaping, stopping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import in_namespace, init_pid, kill_tree, readline_until

FORWARDED = [s for s in range(1, 32) if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD)]


def start(pyz: Path, env: dict, *command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(pyz), *command], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# A child that reports every signal it receives, then exits with 100+N on SIGUSR2 or
# after reporting, so the test can read back what reached it.
REPORTER = r"""
import os, signal, sys, time
got = []
def handler(signum, frame):
    print("got", signum, flush=True)
for s in range(1, 32):
    if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        signal.signal(s, handler)
print("ready", flush=True)
while True:
    line = sys.stdin.readline() if False else None
    time.sleep(0.05)
"""


def test_every_catchable_signal_reaches_the_child(pyz, base_env, tmp_path):
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    proc = start(pyz, base_env, sys.executable, str(script))
    try:
        readline_until(proc.stdout, "ready")
        for signum in FORWARDED:
            if signum in (signal.SIGTERM, signal.SIGINT):
                continue  # those stop the job; checked below
            proc.send_signal(signum)
            assert readline_until(proc.stdout, f"got {signum}").strip() == f"got {signum}"
        proc.send_signal(signal.SIGTERM)
        assert readline_until(proc.stdout, f"got {int(signal.SIGTERM)}")
    finally:
        kill_tree(proc)


def test_sigint_reaches_the_child(pyz, base_env, tmp_path):
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    proc = start(pyz, base_env, sys.executable, str(script))
    try:
        readline_until(proc.stdout, "ready")
        proc.send_signal(signal.SIGINT)
        assert readline_until(proc.stdout, f"got {int(signal.SIGINT)}")
    finally:
        kill_tree(proc)


def test_child_starts_with_empty_mask_and_default_dispositions(pyz, base_env):
    # /proc/self/status of the child: nothing blocked, nothing ignored (SIGPIPE included).
    out = subprocess.run([sys.executable, str(pyz), "--", "grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
                         env=base_env, capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    assert int(fields["SigBlk"], 16) == 0
    assert int(fields["SigIgn"], 16) == 0


def test_child_runs_in_its_own_process_group(pyz, base_env):
    out = subprocess.run([sys.executable, str(pyz), "sh", "-c", "echo $$; ps -o pgid= -p $$"],
                         env=base_env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1]


# Through the pyz, the 11 codes here and all 256 below are the slow tier's; the fast tier checks
# the loop's exit codes in-process (tests/test_supervisor.py).
@pytest.mark.slow
@pytest.mark.parametrize("code", [0, 1, 2, 3, 42, 126, 127, 128, 200, 254, 255])
def test_exit_codes_pass_through(pyz, base_env, code):
    result = subprocess.run([sys.executable, str(pyz), "sh", "-c", f"exit {code}"], env=base_env)
    assert result.returncode == code


@pytest.mark.slow
def test_every_exit_code_passes_through(pyz, base_env):
    # One smsuper per code would take long; a loop of sh children under one shell
    # checks the init's exit path for all 256 values through the pyz anyway.
    script = "; ".join(f"{sys.executable} {pyz} sh -c 'exit {c}'; [ $? -eq {c} ] || echo BAD {c}" for c in range(256))
    out = subprocess.run(["sh", "-c", script], env=base_env, capture_output=True, text=True).stdout
    assert "BAD" not in out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM, signal.SIGUSR1])
def test_death_by_signal_is_128_plus_n(pyz, base_env, signum):
    result = subprocess.run([sys.executable, str(pyz), "sh", "-c", f"kill -{int(signum)} $$"], env=base_env)
    assert result.returncode == 128 + signum


def test_missing_program_is_127_with_one_line(pyz, base_env):
    base_env.pop("SMSUPER_USER")  # the default account: no warning about keeping uid 0
    result = subprocess.run([sys.executable, str(pyz), "no-such-program-xyz"], env=base_env,
                            capture_output=True, text=True)
    assert result.returncode == 127
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-program-xyz" in lines[0] and lines[0].startswith("smsuper")


def test_not_executable_is_126(pyz, base_env, tmp_path):
    target = tmp_path / "data.txt"
    target.write_text("not a program\n")
    result = subprocess.run([sys.executable, str(pyz), str(target)], env=base_env, capture_output=True, text=True)
    assert result.returncode == 126
    assert str(target) in result.stderr


def test_double_dash_runs_even_a_word_of_smsuper(pyz, base_env, tmp_path):
    # `-- train` must run a program named train, not the training job.
    program = tmp_path / "train"
    program.write_text("#!/bin/sh\necho user-train-ran\nexit 4\n")
    program.chmod(0o755)
    env = dict(base_env, PATH=f"{tmp_path}:{base_env['PATH']}")
    result = subprocess.run([sys.executable, str(pyz), "--", "train"], env=env, capture_output=True, text=True)
    assert result.returncode == 4 and "user-train-ran" in result.stdout


def test_leftover_descendants_are_stopped_before_exit(pyz, base_env, tmp_path):
    marker = tmp_path / "leftover.pid"
    result = subprocess.run(
        [sys.executable, str(pyz), "sh", "-c", f"sleep 300 & echo $! > {marker}; exit 6"],
        env=dict(base_env, SMSUPER_GRACE_PERIOD="5"), timeout=30)
    assert result.returncode == 6
    leftover = int(marker.read_text())
    assert not Path(f"/proc/{leftover}").exists()


@pytest.mark.slow
def test_idle_init_does_not_poll(pyz, base_env):
    # Idle, PID 1 sleeps in the kernel: its CPU time barely moves over a second
    # and it is not woken up repeatedly (voluntary context switches stay put).
    proc = subprocess.Popen([sys.executable, str(pyz), "sleep", "30"], env=base_env)
    try:
        time.sleep(2.0)
        before = _switches(proc.pid)
        time.sleep(1.0)
        after = _switches(proc.pid)
        assert after - before <= 2
    finally:
        proc.terminate()
        proc.wait()


def _switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split()[1])
    raise AssertionError("no ctxt switches line")


def test_log_level_hides_info_lines(pyz, base_env):
    quiet = subprocess.run([sys.executable, str(pyz), "sh", "-c", "exit 3"],
                           env=dict(base_env, SMSUPER_LOG_LEVEL="error"), capture_output=True, text=True)
    loud = subprocess.run([sys.executable, str(pyz), "sh", "-c", "exit 3"],
                          env=dict(base_env, SMSUPER_LOG_LEVEL="debug"), capture_output=True, text=True)
    assert quiet.stderr == ""
    assert "smsuper" in loud.stderr


def test_bad_setting_names_the_variable(pyz, base_env):
    result = subprocess.run([sys.executable, str(pyz), "true"], env=dict(base_env, SMSUPER_GRACE_PERIOD="soon"),
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "SMSUPER_GRACE_PERIOD" in result.stderr and "seconds" in result.stderr


# ---- as PID 1 of a real PID namespace ------------------------------------------------

def unshare(pyz: Path, env: dict, *command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(in_namespace(sys.executable, str(pyz), *command),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_pid1_reaps_orphans_and_leaves_no_zombie(pyz, base_env):
    # The child starts 100 background sleeps and exits at once: they become
    # orphans of PID 1, must be reaped as they die, and none may remain.
    command = ("for i in $(seq 100); do sleep 0.5 & done; "
               "sleep 1.5; echo zombies=$(ps -eo stat= | grep -c '^Z'); "
               "echo procs=$(ps -eo pid= | wc -l)")
    proc = unshare(pyz, base_env, "sh", "-c", command)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "zombies=0" in out


def test_pid1_leaves_nothing_behind_after_child_exits(pyz, base_env):
    command = "for i in $(seq 100); do sleep 300 & done; exit 0"
    proc = unshare(pyz, dict(base_env, SMSUPER_GRACE_PERIOD="5", SMSUPER_LOG_LEVEL="info"), "sh", "-c", command)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "100 leftover" in err


def test_pid1_handles_sigterm_from_outside(pyz, base_env):
    # PID 1 without a handler would ignore SIGTERM entirely.
    proc = unshare(pyz, base_env, "sh", "-c", "trap 'echo trapped; exit 9' TERM; echo ready; while :; do sleep 0.1; done")
    try:
        assert readline_until(proc.stdout, "ready")
        os.kill(init_pid(proc.pid), signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert "trapped" in out
        assert proc.returncode == 9
    finally:
        proc.kill()


@pytest.mark.slow
def test_pid1_kills_a_child_that_ignores_sigterm_after_the_grace_period(pyz, base_env):
    env = dict(base_env, SMSUPER_GRACE_PERIOD="1")
    proc = unshare(pyz, env, "sh", "-c", "trap '' TERM; echo ready; sleep 300")
    try:
        assert readline_until(proc.stdout, "ready")
        os.kill(init_pid(proc.pid), signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGKILL
        assert "SIGKILL" in err
    finally:
        proc.kill()


def test_subreaper_adopts_orphans_when_not_pid1(pyz, base_env, tmp_path):
    # Not PID 1: smsuper registers as child subreaper, so a double-forked daemon
    # is re-parented to it (and stopped with the job), not to the host's init.
    marker = tmp_path / "daemon.pid"
    proc = start(pyz, base_env, "sh", "-c", f"(sleep 300 & echo $! > {marker}); echo ready; sleep 300")
    try:
        readline_until(proc.stdout, "ready")
        deadline = time.monotonic() + 10
        while not marker.exists() or not marker.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        daemon = int(marker.read_text())
        stat = Path(f"/proc/{daemon}/stat").read_text()
        parent = int(stat[stat.rfind(")") + 2:].split()[1])
        assert parent == proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not Path(f"/proc/{daemon}").exists()
