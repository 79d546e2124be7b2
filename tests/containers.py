"""Real containers for the tests: Debian images built with debootstrap, run with podman.

The recipe (see ../shared/DESIGN.md):

1. base image per Debian suite: ``debootstrap --variant=minbase --include=python3,NGINX``
   into a directory, ``tar`` it, ``podman import`` it as ``localhost/smsuper-base-SUITE:KEY``;
2. test image per (suite, pyz): ``podman build`` a Dockerfile that COPYs the pyz to
   ``/smsuper.pyz`` with ``ENTRYPOINT ["python3", "/smsuper.pyz"]``, the way users ship it;
3. ``podman run`` with runc, cgroupfs, file events, the ulimits this machine allows and the
   host network.

Base images take minutes to build (a debootstrap each), so they are cached twice, both keyed
by suite and recipe: as podman images, and as rootfs tarballs under ``CACHE_DIR`` (which
survive a ``podman system reset``). A fresh machine builds them; the four suites build in
parallel threads, started the first time any test asks for an image. Test images are cheap
(one COPY layer) and keyed by the pyz's sha256, so a new build never runs an old image.

Every podman invocation passes its configuration as flags (runtime, cgroup manager, events
backend) so a machine needs no containers.conf edits: crun fails on this kernel's cgroups,
and without systemd as PID 1 the systemd cgroup manager and journald events do not work.

Several engineers share the machine, so every cache entry is built under an flock: two test
sessions wanting the same image wait for one build instead of racing two.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence

import pytest

# Suite -> the CPython its python3 package gives. Checked against the built image.
SUITES: Dict[str, tuple] = {
    "bullseye": (3, 9),
    "bookworm": (3, 11),
    "trixie": (3, 13),
    "sid": (3, 14),
}

# nginx-light was dropped after bookworm; the plain package is the light one's successor.
NGINX_PACKAGE = {"bullseye": "nginx-light", "bookworm": "nginx-light", "trixie": "nginx", "sid": "nginx"}

# Bump when the base recipe changes so every cache entry is rebuilt.
RECIPE_VERSION = "1"

MIRROR = os.environ.get("SMSUPER_TEST_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path(os.environ.get("SMSUPER_TEST_CACHE", "/var/cache/smsuper-tests"))

# podman's default OCI runtime may be crun, which fails on this kernel's cgroups.
RUNC = next((p for p in ("/usr/sbin/runc", "/usr/bin/runc") if os.path.exists(p)), "runc")
PODMAN = ["podman", "--runtime", RUNC, "--cgroup-manager", "cgroupfs", "--events-backend", "file"]

# Raising limits above the host's is not permitted here; --network host avoids netavark setup.
RUN_FLAGS = [
    "--ulimit", "nofile=1024:1024",
    "--ulimit", "nproc=4096:4096",
    "--network", "host",
    "--pull", "never",
]

DOCKERFILE = """\
FROM {base}
COPY smsuper.pyz /smsuper.pyz
ENTRYPOINT ["python3", "/smsuper.pyz"]
"""

# Generous: a debootstrap of one suite takes about two minutes when four run at once.
BUILD_TIMEOUT = 1200


# ---- small helpers -----------------------------------------------------------

def podman(*args: str, timeout: float = 120, check: bool = True,
           input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run one podman command with this machine's flags; text output captured."""
    cmd = PODMAN + list(args)
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input)
    result = subprocess.CompletedProcess(cmd, proc.returncode,
                                         proc.stdout.decode("utf-8", "replace"),
                                         proc.stderr.decode("utf-8", "replace"))
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}\n"
                           f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}")
    return result


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock, held across processes (other test sessions on this machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_packages(suite: str) -> List[str]:
    return ["python3", NGINX_PACKAGE[suite]]


def base_key(suite: str) -> str:
    recipe = json.dumps([RECIPE_VERSION, suite, base_packages(suite)])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def base_tag(suite: str) -> str:
    return f"localhost/smsuper-base-{suite}:{base_key(suite)}"


# ---- building ------------------------------------------------------------------

@dataclass
class BuildRecord:
    """How one suite's base image was obtained, for the session's report."""
    suite: str
    source: str = ""            # "podman image cache", "rootfs tarball cache" or "debootstrap"
    debootstrap_s: float = 0.0
    tar_s: float = 0.0
    import_s: float = 0.0
    total_s: float = 0.0
    test_image_s: Dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{self.suite:9s} base from {self.source}"]
        if self.debootstrap_s:
            parts.append(f"debootstrap {self.debootstrap_s:.1f}s")
        if self.tar_s:
            parts.append(f"tar {self.tar_s:.1f}s")
        if self.import_s:
            parts.append(f"podman import {self.import_s:.1f}s")
        parts.append(f"total {self.total_s:.1f}s")
        for tag, secs in self.test_image_s.items():
            parts.append(f"podman build {secs:.1f}s")
        return ", ".join(parts)


def _debootstrap(suite: str, root: Path) -> None:
    cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(base_packages(suite)),
           suite, str(root), MIRROR]
    last = None
    for attempt in range(2):  # one retry: a mirror hiccup should not fail the whole session
        if root.exists():
            shutil.rmtree(root)
        proc = subprocess.run(cmd, capture_output=True, timeout=BUILD_TIMEOUT)
        if proc.returncode == 0:
            return
        last = proc
    tail = (last.stdout + last.stderr).decode("utf-8", "replace")[-3000:]
    log = root / "debootstrap" / "debootstrap.log"
    if log.exists():
        tail += "\n--- debootstrap.log ---\n" + log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{' '.join(cmd)} exited {last.returncode}:\n{tail}")


def _trim(root: Path) -> None:
    """Drop what a container never needs at run time: downloaded .debs and apt lists."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        directory = root / sub
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.is_file() and entry.name != "lock":
                entry.unlink()


def build_base_image(suite: str) -> BuildRecord:
    """Make sure localhost/smsuper-base-SUITE:KEY exists; build it the cheapest way possible."""
    record = BuildRecord(suite)
    start = time.monotonic()
    tag = base_tag(suite)
    with file_lock(CACHE_DIR / f"base-{suite}.lock"):
        if image_exists(tag):
            record.source = "podman image cache"
        else:
            tarball = CACHE_DIR / f"rootfs-{suite}-{base_key(suite)}.tar"
            if tarball.exists():
                record.source = "rootfs tarball cache"
            else:
                record.source = "debootstrap"
                # Left by a session killed mid-build; nobody else builds SUITE while we hold the lock.
                for stale in CACHE_DIR.glob(f"build-{suite}-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                work = Path(tempfile.mkdtemp(prefix=f"build-{suite}-", dir=CACHE_DIR))
                try:
                    root = work / "rootfs"
                    t0 = time.monotonic()
                    _debootstrap(suite, root)
                    record.debootstrap_s = time.monotonic() - t0
                    _trim(root)
                    t0 = time.monotonic()
                    partial = work / "rootfs.tar"
                    subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                                   check=True, capture_output=True, timeout=BUILD_TIMEOUT)
                    os.replace(partial, tarball)  # atomic: a cached tarball is always whole
                    record.tar_s = time.monotonic() - t0
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            t0 = time.monotonic()
            podman("import", "--quiet", str(tarball), tag, timeout=BUILD_TIMEOUT)
            record.import_s = time.monotonic() - t0
    record.total_s = time.monotonic() - start
    return record


def build_test_image(suite: str, pyz: Path, record: Optional[BuildRecord] = None) -> str:
    """The user's view: base image + COPY smsuper.pyz + exec-form ENTRYPOINT."""
    base = base_tag(suite)
    tag = f"localhost/smsuper-test-{suite}:{sha256_file(pyz)[:16]}-{base_key(suite)}"
    with file_lock(CACHE_DIR / f"test-{suite}.lock"):
        if image_exists(tag):
            return tag
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="smsuper-image-") as context:
            shutil.copyfile(pyz, Path(context) / "smsuper.pyz")
            (Path(context) / "Dockerfile").write_text(DOCKERFILE.format(base=base))
            podman("build", "--quiet", "--pull=never", "-t", tag, context, timeout=BUILD_TIMEOUT)
        if record is not None:
            record.test_image_s[tag] = time.monotonic() - t0
        prune_test_images(f"localhost/smsuper-test-{suite}", keep=tag)
    return tag


def prune_test_images(repository: str, keep: str) -> None:
    """Each pyz build makes a new test image; drop REPOSITORY's ones older than a day.

    Younger ones may belong to another session running right now on this machine.
    """
    listed = podman("images", "--filter", f"reference={repository}",
                    "--filter", "until=24h", "--format", "{{.Repository}}:{{.Tag}}", check=False)
    old = [tag for tag in listed.stdout.split() if tag != keep]
    if old:
        podman("rmi", *old, check=False)


class Images:
    """One per session: base images of all suites, built in parallel on first demand."""

    _instance: Optional["Images"] = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=len(SUITES), thread_name_prefix="image")
        self._bases: Dict[str, Future] = {s: self._pool.submit(build_base_image, s) for s in SUITES}
        self._tests: Dict[tuple, str] = {}
        self._lock = threading.Lock()
        self.reported = False

    @classmethod
    def get(cls) -> "Images":
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def base(self, suite: str) -> BuildRecord:
        return self._bases[suite].result(timeout=BUILD_TIMEOUT * 2)

    def image(self, suite: str, pyz: Path) -> str:
        """Tag of the test image for SUITE holding PYZ; waits for the base image if needed."""
        record = self.base(suite)
        key = (suite, str(pyz), os.stat(pyz).st_mtime_ns)
        with self._lock:
            if key not in self._tests:
                self._tests[key] = build_test_image(suite, pyz, record)
            return self._tests[key]

    def report_lines(self) -> List[str]:
        lines = []
        for suite, future in self._bases.items():
            if not future.done():
                lines.append(f"{suite:9s} base image: still building")
            elif future.exception() is not None:
                lines.append(f"{suite:9s} base image FAILED: {str(future.exception()).splitlines()[0]}")
            else:
                lines.append(future.result().line())
        return lines


# ---- reporting -----------------------------------------------------------------

_report: List[str] = []


def report(line: str) -> None:
    """Record a measurement for the end-of-session summary (and print it in the test's output)."""
    print(line)
    _report.append(line)


def _write_terminal(config: pytest.Config, lines: Sequence[str]) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    context = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
    with context:
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(scope="session")
def images(request) -> Images:
    """The session's image builder; the first use starts all four suites building at once."""
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.fail("podman and debootstrap are required: run scripts/install-test-deps.sh")
    builder = Images.get()
    yield builder
    # Fixtures of the same name in two modules share the builder; report once.
    if not builder.reported:
        builder.reported = True
        lines = ["==== smsuper container report ===="] + builder.report_lines() + _report
        _write_terminal(request.config, lines)


# ---- running -------------------------------------------------------------------

@dataclass
class Container:
    """A detached container; use via `detached()`, which always removes it."""
    name: str

    def logs(self) -> subprocess.CompletedProcess:
        return podman("logs", self.name, check=False)

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        """Until TEXT is in the container's stdout: the command is ready for its signal."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if text in logs.stdout:
                return
            state = self.inspect("{{.State.Status}}")
            if state not in ("created", "configured", "running", "initialized"):
                raise AssertionError(f"container {self.name} is {state} before printing {text!r}:\n"
                                     f"stdout: {logs.stdout}\nstderr: {logs.stderr}")
            if time.monotonic() > deadline:
                raise AssertionError(f"container {self.name} did not print {text!r} in {timeout}s:\n"
                                     f"stdout: {logs.stdout}\nstderr: {logs.stderr}")
            time.sleep(0.1)

    def wait_for_ping(self, url: str, timeout: float = 120) -> None:
        """Until GET URL/ping answers 200; fails with the logs if the container stops first."""
        import requests

        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            logs = self.logs()
            assert time.monotonic() < deadline, f"no /ping 200:\n{logs.stdout}\n{logs.stderr}"
            assert self.inspect("{{.State.Status}}") == "running", f"{logs.stdout}\n{logs.stderr}"
            time.sleep(0.1)

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def exit_code(self) -> int:
        return int(self.inspect("{{.State.ExitCode}}"))

    def host_pid(self) -> int:
        """The host's pid of the container's PID 1 (smsuper)."""
        return int(self.inspect("{{.State.Pid}}"))

    def stop(self, timeout: int) -> "StopResult":
        t0 = time.monotonic()
        proc = podman("stop", "-t", str(timeout), self.name, timeout=timeout + 60, check=False)
        seconds = time.monotonic() - t0
        assert proc.returncode == 0, f"podman stop failed: {proc.stderr}"
        return StopResult(seconds, proc.stderr)

    def kill(self, signal: str) -> None:
        podman("kill", "--signal", signal, self.name)

    def wait(self, timeout: float = 60) -> int:
        """podman wait: the exit code podman recorded once the container has exited."""
        out = podman("wait", self.name, timeout=timeout).stdout.strip()
        return int(out.splitlines()[-1])


@dataclass
class StopResult:
    seconds: float
    stderr: str

    @property
    def podman_escalated(self) -> bool:
        """podman says so when its own SIGKILL had to end the container after the timeout."""
        return "resorting to SIGKILL" in self.stderr or "StopSignal" in self.stderr


def _session_label() -> List[str]:
    """The test session's label (tests/conftest.py): the session's end finds what is left by it."""
    session = os.environ.get("SMSUPER_TEST_SESSION")
    return ["--label", f"SMSUPER_TEST_SESSION={session}"] if session else []


def _env_flags(env: Optional[Mapping[str, str]]) -> List[str]:
    flags: List[str] = []
    for key, value in (env or {}).items():
        flags += ["--env", f"{key}={value}"]
    return flags


@contextlib.contextmanager
def detached(image: str, args: Sequence[str], env: Optional[Mapping[str, str]] = None,
             extra: Sequence[str] = ()) -> Iterator[Container]:
    """`podman run -d IMAGE ARGS...`, removed (forcibly) when the block ends."""
    name = f"smsuper-test-{uuid.uuid4().hex[:12]}"
    podman("run", "-d", "--name", name, *_session_label(), *RUN_FLAGS, *_env_flags(env), *extra, image, *args)
    try:
        yield Container(name)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def run(image: str, args: Sequence[str], env: Optional[Mapping[str, str]] = None,
        extra: Sequence[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """`podman run --rm IMAGE ARGS...` in the foreground; returns its exit code and output."""
    name = f"smsuper-test-{uuid.uuid4().hex[:12]}"
    try:
        return podman("run", "--rm", "--name", name, *_session_label(), *RUN_FLAGS, *_env_flags(env), *extra,
                      image, *args, timeout=timeout, check=False)
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def children_of(pid: int) -> List[tuple]:
    """(pid, state, comm) of every host process whose parent is PID, read from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: split after the last ')'.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append((int(entry), fields[0], comm))
    return found


if __name__ == "__main__":
    # `python tests/containers.py` builds (or finds) every base image and prints the timings.
    builder = Images.get()
    for suite in SUITES:
        try:
            print(builder.base(suite).line(), flush=True)
        except Exception as error:  # report every suite, then fail
            print(f"{suite}: FAILED: {error}", file=sys.stderr, flush=True)
    sys.exit(0 if all(f.exception() is None for f in builder._bases.values()) else 1)
