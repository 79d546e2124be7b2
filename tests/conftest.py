"""Shared fixtures (every test runs the built dist/smsuper.pyz, not the source tree) and the
session's guard against leftovers: a run FAILS when a test left a process or a container behind.

Tiers: `python3 -m pytest -m "not slow"` is the fast tier (unit tests and the quick end-to-end
ones); `bash scripts/test.sh` runs everything, the slow tier (real containers, every Python,
the SDK, the demos) included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `import helpers` whatever pytest's import mode; the in-process tests import the source tree's smsuper.
for _path in (ROOT / "tests", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from containers import images  # noqa: F401  (fixture: the session's container images)

PYZ = ROOT / "dist" / "smsuper.pyz"

# Every process a test starts inherits this variable (base_env copies os.environ): it is how
# the guard below recognises this session's processes wherever they were re-parented to.
SESSION_VARIABLE = "SMSUPER_TEST_SESSION"
SESSION = uuid.uuid4().hex[:16]


# ---- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def pyz() -> Path:
    """Build dist/smsuper.pyz once per test session and return its path."""
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(PYZ)], check=True,
                   stdout=subprocess.DEVNULL)
    return PYZ


@pytest.fixture()
def base_env(tmp_path) -> dict:
    """An environment for running smsuper directly on this (privileged-looking) machine."""
    env = dict(os.environ)
    env["SMSUPER_ALLOW_PRIVILEGED"] = "1"  # the dev machine looks like a privileged container
    # Workloads keep uid 0 (still without capabilities and with no_new_privs): these tests are
    # about other behaviour, and their files live where only root may go (pytest's 0700 tmp
    # dirs, the Pythons under /root/.pyenv). tests/test_privileges.py runs the default
    # (nobody) and a USER 1000 image in real containers.
    env["SMSUPER_USER"] = "root"
    env["SMSUPER_CACHE_DIR"] = str(ROOT / ".cache" / "pyz")  # shared across tests: extraction is once per build
    env["SMSUPER_METRICS_PORT"] = "0"
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture()
def serve(pyz, base_env, tmp_path):
    """serve(code=..., **env) starts `smsuper serve` and waits for nothing; every server is killed at the end."""
    from helpers import GATED_MODEL, Server, serve_environment, serve_layout

    servers: list = []

    def start(code: str = GATED_MODEL, files: Optional[Dict[str, str]] = None, loaded: bool = True,
              cwd: Optional[Path] = None, **extra: str):
        base = serve_layout(tmp_path / "ml", code, files)
        if not loaded:
            (base / "load").unlink()
        server = Server(pyz, serve_environment(base_env, base, tmp_path / "run", **extra), base, cwd)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(params=["numpy", "plain"])
def numpy_mode(request, monkeypatch):
    """Run a test of the source tree's codecs with numpy, and again as if the image had none."""
    from helpers import has_numpy
    from smsuper.serve.worker import codecs

    if request.param == "numpy" and not has_numpy():
        pytest.skip("numpy is not installed")
    monkeypatch.setattr(codecs, "_numpy", __import__("numpy") if request.param == "numpy" else False)
    return request.param


# ---- the session --------------------------------------------------------------------------------

def pytest_configure(config) -> None:
    os.environ[SESSION_VARIABLE] = SESSION
    # A SIGTERM (CI's timeout, a closed terminal) would end pytest at once, with no test's
    # `finally` and no fixture teardown run: the servers and containers it started would stay.
    # As an interrupt, pytest stops the way it does on Ctrl-C: everything is torn down.
    if hasattr(signal, "SIGHUP"):
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _interrupt)
    config._smsuper_leftovers = Leftovers(config)  # type: ignore[attr-defined]


def _interrupt(signum: int, _frame) -> None:
    # Once is enough: a second signal must not cut the teardown short (a SIGKILL still can).
    for other in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(other, signal.SIG_IGN)
    raise KeyboardInterrupt(f"pytest received {signal.Signals(signum).name}")


def pytest_collection_finish(session) -> None:
    """Start building the container base images as soon as we know a test needs them.

    debootstrap of four Debian suites takes minutes; started here, it overlaps with
    every non-container test instead of waiting for the first container test.
    """
    if not any("images" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    import shutil

    import containers

    if shutil.which("podman") and shutil.which("debootstrap"):
        containers.Images.get()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    item.config._smsuper_leftovers.note(item.nodeid)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    # trylast: after pytest's own sessionfinish, which tears down every fixture still set up.
    guard: Leftovers = session.config._smsuper_leftovers
    lines = guard.stop_everything_left()
    if not lines:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("=", "left behind by the tests (now killed)", red=True, bold=True)
        for line in lines:
            reporter.write_line(line)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class Leftovers:
    """Which processes and containers this session started, and which test was running then.

    A process is the session's when it descends from pytest, carries the session's variable
    (inherited: it finds processes re-parented away, inside PID namespaces too), or runs from
    the session's temporary directories. Containers carry the session's label
    (tests/containers.py). After each test the processes alive are noted with the test's name;
    at the end of the session, once every fixture is torn down, anything still alive was left
    behind: it is reported with the test that started it, then killed, so no run leaves
    anything behind, and the run fails.
    """

    def __init__(self, config) -> None:
        self.config = config
        self.me = os.getpid()
        self.first_seen: Dict[Tuple[int, int], str] = {}  # (pid, start time) -> the test running then
        self.verdicts: Dict[Tuple[int, int], bool] = {}

    def note(self, nodeid: str) -> None:
        for key in self._alive():
            self.first_seen.setdefault(key, nodeid)

    def stop_everything_left(self) -> List[str]:
        lines = []
        for _ in range(10):  # what a killed process had started may appear only now: again until none
            alive = self._alive(describe=True)
            if not alive:
                break
            for key in alive:
                try:
                    os.kill(key[0], signal.SIGSTOP)  # no new children while we collect them
                except OSError:
                    pass
            for key, (title, cwd) in alive.items():
                test = self.first_seen.get(key, "the session's end (started after the last test)")
                lines.append(f"process {key[0]} [{title}] (cwd {cwd}), left by {test}")
                try:
                    os.kill(key[0], signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.2)
        for name in self._containers():
            lines.append(f"container {name}, left by a container test")
            import containers

            containers.podman("rm", "--force", "--time", "0", name, check=False)
        return lines

    # ---- what is alive ------------------------------------------------------------------------

    def _alive(self, describe: bool = False) -> dict:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                stat = _stat(int(entry))
                if stat is not None:
                    stats[int(entry)] = stat
        ours = {}
        for pid, (state, parent, started) in stats.items():
            if pid == self.me or state in "ZX":
                continue
            key = (pid, started)
            if self._descends_from_me(pid, stats) or self._marked(key):
                ours[key] = (_read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip(),
                             _cwd(pid)) if describe else None
        return ours

    def _descends_from_me(self, pid: int, stats: dict) -> bool:
        seen = 0
        while pid in stats and seen < 1000:
            parent = stats[pid][1]
            if parent == self.me:
                return True
            if parent <= 1:
                return False
            pid, seen = parent, seen + 1
        return False

    def _marked(self, key: Tuple[int, int]) -> bool:
        if key not in self.verdicts:
            self.verdicts[key] = self._is_ours(key[0])
        return self.verdicts[key]

    def _is_ours(self, pid: int) -> bool:
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
        mark = f"{SESSION_VARIABLE}=".encode()
        marks = [variable for variable in environ if variable.startswith(mark)]
        if marks:
            return marks[0] == mark + SESSION.encode()  # another session's process is not ours
        places = [str(self._basetemp()), str(PYZ)]
        cmdline = _read(f"/proc/{pid}/cmdline").decode(errors="replace")
        cwd = _cwd(pid)
        return any(place in cmdline for place in places) or cwd.startswith(places[0])

    def _basetemp(self) -> Path:
        try:
            return self.config._tmp_path_factory.getbasetemp()
        except Exception:  # no tmp_path used yet: nothing can run from there
            return Path("/nonexistent-smsuper-basetemp")

    def _containers(self) -> List[str]:
        import shutil

        if shutil.which("podman") is None:
            return []
        import containers

        listed = containers.podman("ps", "--all", "--filter", f"label={SESSION_VARIABLE}={SESSION}",
                                   "--format", "{{.Names}}", check=False)
        return listed.stdout.split()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "?"


def _stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state, parent pid, start time in clock ticks) from /proc/PID/stat; None once it is gone."""
    raw = _read(f"/proc/{pid}/stat").decode(errors="replace")
    if ")" not in raw:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])
