"""A pass-through command's terminal shows the command's output and nothing else.

`docker run -it IMAGE bash` under tini or dumb-init prints nothing of their
own; smsuper's lines (the metrics address, the exit) are there only when
asked for (SMSUPER_LOG_LEVEL) or when something is wrong, and a pass-through
command opens no metrics port unless SMSUPER_METRICS_PORT asks for one. Each
run is the built pyz as PID 1 of a new PID namespace (and a network
namespace of its own where a listening port is looked for).
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

RUN_LIMIT = 120  # a safety net against a hang, never an assertion about speed
COMMAND = ["sh", "-c", "echo hi"]


def environment(base_env: dict, **extra: str) -> dict:
    env = dict(base_env)
    # The defaults are what this file is about: the command runs as nobody, as on the platform
    # (SMSUPER_USER=root would rightly warn).
    for name in ("SMSUPER_LOG_LEVEL", "SMSUPER_METRICS_PORT", "SAGEMAKER_SAFE_PORT_RANGE", "SMSUPER_USER"):
        env.pop(name, None)
    env.update(extra)
    return env


def namespace(pyz: Path, *command: str, network: bool = False) -> list:
    return ["unshare", "--pid", "--fork", "--mount-proc", *(["--net"] if network else []), sys.executable, str(pyz),
            *command]


def run(pyz: Path, env: dict, *command: str, network: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(namespace(pyz, *command, network=network), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_LIMIT)


def on_a_terminal(pyz: Path, env: dict) -> bytes:
    """Everything the person at the terminal sees (stdout and stderr are the same pty, as with -it)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(namespace(pyz, *COMMAND), env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.time() + RUN_LIMIT
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer is gone
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=RUN_LIMIT) == 0, seen
    return seen


def test_output_is_exactly_the_commands(pyz, base_env):
    proc = run(pyz, environment(base_env), *COMMAND)
    assert proc.returncode == 0
    assert proc.stdout == b"hi\n"
    assert proc.stderr == b""


def test_terminal_shows_only_the_commands_output(pyz, base_env):
    assert on_a_terminal(pyz, environment(base_env)) == b"hi\r\n"


def test_smsuper_lines_come_back_with_the_log_level(pyz, base_env):
    proc = run(pyz, environment(base_env, SMSUPER_LOG_LEVEL="info"), *COMMAND)
    assert proc.returncode == 0 and proc.stdout == b"hi\n"
    assert b"smsuper: INFO:" in proc.stderr, proc.stderr


def test_something_wrong_is_still_said(pyz, base_env):
    proc = run(pyz, environment(base_env), "no-such-program-here")
    assert proc.returncode == 127
    assert b"no-such-program-here" in proc.stderr, proc.stderr


LISTENERS = ["sh", "-c", "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null"]


def listening_ports(table: bytes) -> set:
    ports = set()
    for line in table.decode().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_no_metrics_port_unless_asked_for(pyz, base_env):
    quiet = run(pyz, environment(base_env), *LISTENERS, network=True)
    assert quiet.returncode == 0, quiet.stderr
    assert listening_ports(quiet.stdout) == set(), quiet.stdout
    asked = run(pyz, environment(base_env, SMSUPER_METRICS_PORT="9464"), *LISTENERS, network=True)
    assert asked.returncode == 0, asked.stderr
    assert 9464 in listening_ports(asked.stdout), asked.stdout
