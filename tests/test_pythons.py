"""The same dist/smsuper.pyz on every CPython it supports.

Directly on this machine under each pyenv CPython (3.9 to 3.13), and as PID 1 in podman
images of Debian suites whose python3 spans the rest (bullseye 3.9 ... sid 3.14). Each gets
`--version` and one signal-forwarding case: SIGUSR1 sent to smsuper reaches the command,
whose trap decides the exit code.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import containers

pytestmark = [pytest.mark.slow]  # real containers and every CPython

PYENV = Path("/root/.pyenv/versions")
MINIMUM = (3, 9)

TRAPS_USR1 = 'trap "exit 7" USR1; echo ready; while :; do sleep 0.1; done'


def _pyenv_pythons():
    found = []
    for directory in sorted(PYENV.glob("*")) if PYENV.is_dir() else []:
        match = re.fullmatch(r"(\d+)\.(\d+)\.\d+", directory.name)
        python = directory / "bin" / "python"
        if match and python.exists() and (int(match[1]), int(match[2])) >= MINIMUM:
            found.append(pytest.param(python, id=directory.name))
    return found


PYENV_PYTHONS = _pyenv_pythons()


@pytest.mark.parametrize("python", PYENV_PYTHONS)
def test_version_under_pyenv(python, pyz, base_env):
    proc = subprocess.run([str(python), str(pyz), "--version"], env=base_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("smsuper "), proc.stdout
    version = python.parent.parent.name
    assert version in proc.stdout, proc.stdout  # the interpreter we asked for really ran it


@pytest.mark.parametrize("python", PYENV_PYTHONS)
def test_signal_forwarding_under_pyenv(python, pyz, base_env):
    with subprocess.Popen([str(python), str(pyz), "--", "sh", "-c", TRAPS_USR1], env=base_env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watchdog = threading.Timer(60, proc.kill)  # a hang fails the test instead of the run
        watchdog.start()
        try:
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"{line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
            proc.send_signal(signal.SIGUSR1)
            code = proc.wait(timeout=30)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
        stderr = proc.stderr.read()
    assert code == 7, stderr


def test_pyenv_matrix_is_not_empty():
    # The matrix silently shrinking to nothing would hide every test above.
    assert PYENV_PYTHONS, f"no CPython >= 3.9 under {PYENV}"


@pytest.mark.parametrize("suite", list(containers.SUITES))
def test_version_in_container(suite, images, pyz):
    image = images.image(suite, pyz)
    proc = containers.run(image, ["--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("smsuper "), proc.stdout
    major, minor = containers.SUITES[suite]
    # The suite really gives the CPython the matrix claims it covers.
    assert re.search(rf"python {major}\.{minor}\.\d+", proc.stdout), proc.stdout


@pytest.mark.parametrize("suite", list(containers.SUITES))
def test_signal_forwarding_in_container(suite, images, pyz):
    image = images.image(suite, pyz)
    with containers.detached(image, ["sh", "-c", TRAPS_USR1]) as box:
        box.wait_for_output("ready")
        box.kill("USR1")  # to PID 1, smsuper; it must forward to the command's group
        code = box.wait()
        logs = box.logs()
    assert code == 7, f"stdout: {logs.stdout}\nstderr: {logs.stderr}"
