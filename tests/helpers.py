"""What the test modules share: ports, waiting, /proc lookups, PID namespaces, and the serve and
train layouts. Fixtures built on these live in conftest.py.

Every limit here is a safety net against a hang, never an assertion about speed: tests wait for
a condition and only give up when it cannot be coming.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import re
import selectors
import shutil
import signal
import socket
import subprocess
import zipfile
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import requests

WAIT_LIMIT = 90  # seconds: only ever reached when something hangs
RUN_LIMIT = 300  # a whole job run (training, a build): only ever reached when something hangs

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the in-process tests import the source tree's smsuper
    sys.path.insert(0, str(ROOT))
NGINX = "/usr/sbin/nginx"


# ---- ports and waiting ------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def eventually(check: Callable[[], bool], what: str, limit: float = WAIT_LIMIT) -> None:
    """Poll `check` until it is true; fail naming `what` once `limit` seconds have passed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def read_until(stream, needle: bytes, limit: float = WAIT_LIMIT) -> bytes:
    """Read a binary pipe (a Popen's stdout/stderr) until `needle` was seen; returns all read."""
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + limit
    try:
        while needle not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"never saw {needle!r}; got {seen!r}")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"stream closed before {needle!r}; got {seen!r}")
            seen += chunk
    finally:
        selector.close()
    return seen


def readline_until(stream, text: str, limit: float = 20.0) -> str:
    """Read a text pipe line by line until one contains `text`; returns that line."""
    deadline = time.monotonic() + limit
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return line
    raise AssertionError(f"never saw {text!r}; got {seen!r}")


def wait_for_ping(port: int, proc: Optional[subprocess.Popen] = None, limit: float = WAIT_LIMIT):
    """The first 200 of GET /ping on `port`; None when `proc` exited first, "timeout" at the limit."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return 200
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return "timeout"


def stop(proc: subprocess.Popen, limit: float = WAIT_LIMIT) -> bytes:
    """SIGTERM (the platform's stop) then, at the limit, SIGKILL; returns what it wrote to stderr.

    Started through `in_namespace`, the SIGTERM goes to the namespace's PID 1: unshare itself
    ignores SIGTERM while it waits for its child, so the stop would only ever be the SIGKILL."""
    if proc.poll() is None:
        args = proc.args if isinstance(proc.args, (list, tuple)) else [proc.args]
        inits = children_of(proc.pid) if os.path.basename(str(args[0])) == "unshare" else []
        try:
            os.kill(inits[0] if inits else proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        _, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    return stderr


# ---- processes, as /proc shows them -------------------------------------------------------------

def children_of(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except OSError:
        return []


def title_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(pid: int) -> List[int]:
    """Every process below `pid` now, children before grandchildren."""
    found: List[int] = []
    parents = [pid]
    while parents:
        below = [child for parent in parents for child in children_of(parent)]
        found += below
        parents = below
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started without a PID namespace and everything below it, then reap it.

    Killing smsuper alone (not PID 1 here) would leave its children running: they are in
    process groups of their own and get re-parented away.
    """
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGSTOP)  # no new children while we collect them
        except ProcessLookupError:
            pass
        for pid in [*descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=WAIT_LIMIT)


def host_pid(namespace_pid: int, init: int) -> int:
    """The host's pid of a process that knows itself as `namespace_pid` inside init's PID namespace."""
    namespace = os.readlink(f"/proc/{init}/ns/pid")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != namespace:
                continue
            with open(f"/proc/{entry}/status") as handle:
                for line in handle:
                    if line.startswith("NSpid:") and int(line.split()[-1]) == namespace_pid:
                        return int(entry)
        except OSError:
            continue
    raise AssertionError(f"no process {namespace_pid} in the namespace of {init}")


# ---- a new PID namespace ----------------------------------------------------------------------

def in_namespace(*command: str, kill_child: bool = True) -> List[str]:
    """`unshare` argv that runs COMMAND as PID 1 of a new PID namespace (with its own /proc).

    --kill-child: when unshare dies (a test killed it, pytest was interrupted), the namespace's
    PID 1 gets SIGKILL, and with it every process of the namespace; nothing outlives the test.
    """
    return ["unshare", "--pid", "--fork", "--mount-proc", *(["--kill-child"] if kill_child else []), *command]


def init_pid(unshare_pid: int, limit: float = WAIT_LIMIT) -> int:
    """The host's pid of the namespace's PID 1: unshare's only child."""
    eventually(lambda: bool(children_of(unshare_pid)), "unshare to fork PID 1", limit)
    return children_of(unshare_pid)[0]


# ---- serve: a handler module, an /opt/ml tree, a server ---------------------------------------

# A handler module whose predictions can be held at a gate: a request with
# {"gate": true} records its worker's pid in inflight/ and waits until the
# test creates the file `open`; {"sleep": s} sleeps; anything else is echoed.
GATED_MODEL = """
import json, os, time, uuid

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFLIGHT = os.path.join(BASE, "inflight")

def wait_for(path, limit=120):
    deadline = time.time() + limit
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)

def model_fn(model_dir):
    wait_for(os.path.join(BASE, "load"))
    return "model"

def predict_fn(data, model, context):
    if isinstance(data, dict) and data.get("gate"):
        os.makedirs(INFLIGHT, exist_ok=True)
        with open(os.path.join(INFLIGHT, f"{os.getpid()}-{uuid.uuid4().hex}"), "w"):
            pass
        wait_for(os.path.join(BASE, "open"))
        return {"pid": os.getpid(), "gated": True}
    if isinstance(data, dict) and "sleep" in data:
        time.sleep(data["sleep"])
    if context.custom_attributes:
        context.set_custom_attributes("echo:" + context.custom_attributes)
    return data
"""


def serve_layout(base: Path, code: str = GATED_MODEL, files: Optional[Dict[str, str]] = None) -> Path:
    """An /opt/ml tree for `serve`: model/code/inference.py (+ `files`), the model's gate open."""
    code_dir = base / "model" / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "inference.py").write_text(textwrap.dedent(code))
    for name, text in (files or {}).items():
        (code_dir / name).write_text(text)
    (base / "load").touch()  # GATED_MODEL's model_fn returns at once unless a test removes this
    return base


class Server:
    """One `smsuper serve` as PID 1 of its own PID namespace; output goes to files beside `base`."""

    def __init__(self, pyz: Path, env: dict, base: Path, cwd: Optional[Path] = None,
                 python: str = sys.executable, command: Optional[List[str]] = None,
                 preexec_fn: Optional[Callable[[], None]] = None):
        """`command`: what runs as PID 1 instead of `PYTHON PYZ serve` (a shell that execs it);
        `preexec_fn`: run in unshare before it execs (an rlimit that PID 1 inherits)."""
        self.base = base
        self.port = int(env["SAGEMAKER_BIND_TO_PORT"])
        self.stdout_path = base.parent / "stdout.txt"
        self.stderr_path = base.parent / "stderr.txt"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(in_namespace(*(command or [python, str(pyz), "serve"])),
                                         env=env, cwd=str(cwd or base), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, preexec_fn=preexec_fn)

    # ---- observing ----------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def init_pid(self) -> int:
        return init_pid(self.proc.pid)

    def child(self, marker: str) -> int:
        """The pid of PID 1's child whose title contains `marker`."""
        found: List[int] = []

        def look() -> bool:
            found[:] = [p for p in children_of(self.init_pid()) if marker in title_of(p)]
            return bool(found)

        eventually(look, f"a child titled {marker!r}")
        return found[0]

    def gunicorn_master(self) -> int:
        found: List[int] = []

        def look() -> bool:
            found[:] = [p for p in children_of(self.init_pid())
                        if "gunicorn: master" in title_of(p) or "_gunicorn" in title_of(p)]
            return bool(found)

        eventually(look, "the gunicorn master")
        return found[0]

    def ping(self) -> Optional[requests.Response]:
        try:
            return requests.get(self.url("/ping"), timeout=5)
        except requests.RequestException:
            return None

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"smsuper exited {self.proc.returncode}\n{self.stderr()}")
            response = self.ping()
            return response is not None and response.status_code == 200

        eventually(ready, "/ping to answer 200")

    def post(self, data, content_type: str = "application/json", **headers: str) -> requests.Response:
        if not isinstance(data, (bytes, str)):
            data = json.dumps(data)
        return requests.post(self.url("/invocations"), data=data,
                             headers={"Content-Type": content_type, **headers}, timeout=WAIT_LIMIT)

    # ---- stopping --------------------------------------------------------------------
    def terminate(self) -> int:
        os.kill(self.init_pid(), signal.SIGTERM)
        return self.proc.wait(timeout=WAIT_LIMIT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # --kill-child takes the whole namespace with it
            self.proc.wait(timeout=WAIT_LIMIT)


def serve_environment(base_env: dict, base: Path, run_dir: Path, **extra: str) -> dict:
    """base_env for `serve` of `base` on a free port with two workers; `extra` overrides."""
    env = dict(base_env)
    for name in ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SMSUPER_APP"):
        env.pop(name, None)
    env.update({"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(free_port()),
                "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SMSUPER_RUNTIME_DIR": str(run_dir)})
    env.update(extra)
    return env


def in_flight(base: Path) -> int:
    """Requests GATED_MODEL holds at its gate right now."""
    directory = base / "inflight"
    return len(os.listdir(directory)) if directory.exists() else 0


def background(function: Callable[[], requests.Response]) -> Callable[[], requests.Response]:
    """Run `function` in a thread; calling the result joins it and returns its response."""
    box: list = []

    def run() -> None:
        try:
            box.append(function())
        except Exception as error:  # surfaced by the caller
            box.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> requests.Response:
        thread.join(WAIT_LIMIT)
        assert box, "the request did not finish"
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    return result


def nginx_writing(metrics_port: int) -> int:
    """Requests nginx is handling now (stub_status, through smsuper's metrics), this scrape's own included."""
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    found = re.search(r'^smsuper_nginx_connections\{state="writing"\} (\d+)', text, re.MULTILINE)
    return int(found.group(1)) if found else 0


# ---- train: an /opt/ml tree and the command ---------------------------------------------------

def train_layout(base: Path, script: Optional[str] = None, name: str = "train.py",
                 hyperparameters: Optional[dict] = None,
                 channels: Optional[Dict[str, Dict[str, str]]] = None) -> Path:
    """An /opt/ml tree: code, config files, channel data."""
    (base / "code").mkdir(parents=True, exist_ok=True)
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    if script is not None:
        (base / "code" / name).write_text(textwrap.dedent(script))
    if hyperparameters is not None:
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channels = channels or {}
    (config / "inputdataconfig.json").write_text(json.dumps(
        {channel: {"TrainingInputMode": "File", "ContentType": "text/csv"} for channel in channels}))
    for channel, files in channels.items():
        directory = base / "input" / "data" / channel
        directory.mkdir(parents=True, exist_ok=True)
        for file_name, text in files.items():
            (directory / file_name).write_text(text)
    return base


def train_command(pyz: Path, python: str = sys.executable) -> List[str]:
    return in_namespace(python, str(pyz), "train")


def train_environment(base_env: dict, base: Path, **extra: str) -> dict:
    env = dict(base_env)
    for name in ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_TRAINING_MODULE"):
        env.pop(name, None)
    env["SAGEMAKER_BASE_DIR"] = str(base)
    env.update(extra)
    return env


# ---- metrics: reading a scrape ----------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

Labels = Tuple[Tuple[str, str], ...]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Dict[Tuple[str, Labels], float]:
    """Every sample of a text exposition, keyed by name and sorted labels."""
    found = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = tuple(sorted(_LABEL.findall(match.group(2) or "")))
        found[(match.group(1), labels)] = float(match.group(3))
    return found


def value(samples: Dict[Tuple[str, Labels], float], metric: str, /, **labels: str) -> Optional[float]:
    return samples.get((metric, tuple(sorted(labels.items()))))


def scrape(port: int) -> str:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text


def published(port: int, metric: str, expected: float, **labels: str) -> Dict:
    """The scrape once `metric` shows `expected`: a worker publishes its counts and timings
    up to 0.2 s after a request (PUBLISH_DELAY in smsuper/metrics/worker/serving.py)."""
    eventually(lambda: value(parse(scrape(port)), metric, **labels) == expected,
               f"{metric}{labels} to be published as {expected}")
    return parse(scrape(port))


class Prometheus:
    """`prometheus` scraping JOB -> [ports] every second on loopback, with RULES, its data in `directory`."""

    def __init__(self, directory: Path, jobs: Dict[str, List[int]], rules: Optional[Path] = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        scrape_configs = "".join(
            f"""
              - job_name: {job}
                static_configs:
                  - targets: [{", ".join(f'"127.0.0.1:{port}"' for port in ports)}]"""
            for job, ports in jobs.items())
        config = directory / "prometheus.yml"
        config.write_text(textwrap.dedent(f"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            rule_files: [{f'"{rules}"' if rules else ""}]
            scrape_configs:""") + textwrap.dedent(scrape_configs) + "\n")
        self.log = open(directory / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def api(self, path: str, **params: str) -> dict:
        response = requests.get(f"http://127.0.0.1:{self.port}/api/v1/{path}", params=params, timeout=10)
        answer = response.json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def targets(self) -> List[dict]:
        try:
            return self.api("targets")["activeTargets"]
        except requests.RequestException:
            return []

    def target(self) -> Optional[dict]:
        targets = self.targets()
        return targets[0] if targets else None

    def all_up(self, count: int) -> bool:
        targets = self.targets()
        return len(targets) == count and all(target["health"] == "up" for target in targets)

    def query(self, expression: str) -> Optional[float]:
        values = self.values(expression)
        return values[0] if values else None

    def values(self, expression: str) -> List[float]:
        return [float(sample["value"][1]) for sample in self.api("query", query=expression)["result"]]

    def firing(self, alert: str, instance: Optional[int] = None) -> bool:
        for found in self.api("alerts")["alerts"]:
            if found["labels"]["alertname"] == alert and found["state"] == "firing" and (
                    instance is None or found["labels"]["instance"] == f"127.0.0.1:{instance}"):
                return True
        return False

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def counted(port: int) -> Dict[Tuple[str, str], float]:
    """smsuper_http_requests_total by (route, code), from one scrape."""
    found = {}
    for (name, labels), number in parse(scrape(port)).items():
        if name == "smsuper_http_requests_total":
            found[(dict(labels)["route"], dict(labels)["code"])] = number
    return found


def wait_counted(port: int, expected: Dict[Tuple[str, str], int]) -> Dict[Tuple[str, str], float]:
    """The counts once every (route, code) of `expected` shows its number (the access log is
    flushed at most a second late); then none may have more than expected."""
    box: List[Dict[Tuple[str, str], float]] = []

    def arrived() -> bool:
        box[:] = [counted(port)]
        return all(box[0].get(key, 0) >= number for key, number in expected.items())

    try:
        eventually(arrived, f"the counts {expected}")
    except AssertionError:
        raise AssertionError(f"expected at least {expected}, scraped {box[0] if box else None}") from None
    return box[0]


def metrics_env(**extra: str) -> Dict[str, str]:
    return {"SMSUPER_METRICS_PORT": str(free_port()), **extra}


def serving_with_metrics(serve, **extra: str) -> Tuple[object, int]:
    """A ready `smsuper serve` (conftest's fixture) with its metrics endpoint, and that port."""
    env = metrics_env(**extra)
    server = serve(**env)
    server.wait_ready()
    return server, int(env["SMSUPER_METRICS_PORT"])


# ---- the Flask app in-process (the source tree's, not the pyz) --------------------------------

IDENTITY = """
def model_fn(model_dir):
    return "the-model"

def predict_fn(data, model):
    return data
"""


def make_service(tmp_path: Path, code: str, runtime=None, **env: str):
    """A loaded ModelService of the source tree for `code`, as a worker has it."""
    from smsuper.serve.config import resolve
    from smsuper.serve.worker.service import ModelService

    code_dir = tmp_path / "ml" / "model" / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    (code_dir / "inference.py").write_text(textwrap.dedent(code))
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path / "ml"), "SAGEMAKER_MODEL_SERVER_WORKERS": "2", **env}
    service = ModelService(resolve(environ), runtime)
    sys.modules.pop("inference", None)
    service.load()
    return service


def client_for(tmp_path: Path, code: str = IDENTITY, **env: str):
    """A Flask test client of the source tree's app around `code`. Its requests carry what
    gunicorn's do and werkzeug's test client's do not, `wsgi.input_terminated` (the server ends
    the body), so the app reads them as it reads a worker's (tests/test_fast_path.py checks the
    app's shortcut past Flask's dispatch answers as Flask's does, both ways)."""
    from smsuper.serve.worker.app import create_app

    client = create_app(make_service(tmp_path, code, **env)).test_client()
    client.environ_base["wsgi.input_terminated"] = True
    return client


# ---- serve on a chosen interpreter: with numpy, or as an image without it ---------------------

def has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


PYENV = Path("/root/.pyenv/versions")


@functools.lru_cache(maxsize=None)
def python_without_numpy() -> Optional[str]:
    """A CPython >= 3.9 on this machine that cannot import numpy: the image without numpy."""
    candidates = sorted(PYENV.glob("3.*/bin/python")) if PYENV.is_dir() else []
    for python in candidates:
        version = python.parent.parent.name.split(".")
        if (int(version[0]), int(version[1])) < (3, 9):
            continue
        probe = subprocess.run([str(python), "-c", "import numpy"], capture_output=True)
        if probe.returncode != 0:
            return str(python)
    return None




def interpreter(mode: str) -> str:
    if mode == "numpy":
        if not has_numpy():
            pytest.skip("the test interpreter has no numpy (pip install numpy)")
        return sys.executable
    if python_without_numpy() is None:
        pytest.skip("no CPython >= 3.9 without numpy on this machine")
    return python_without_numpy()


def stack_server(pyz: Path, env: dict, base: Path, python: str, address_space: Optional[int] = None) -> Server:
    """A Server on a chosen interpreter, optionally under an address-space limit."""

    def limit() -> None:
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return Server(pyz, env, base, python=python, preexec_fn=limit)


def stack_env(base: Path, runtime: Path, drop: tuple = (), **extra: str) -> dict:
    """What conftest's base_env gives, for servers shared by a whole module; `drop` removes variables."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SMSUPER_APP",
                 "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        env.pop(name, None)
    env.update({
        "SMSUPER_ALLOW_PRIVILEGED": "1", "SMSUPER_USER": "root", "SMSUPER_METRICS_PORT": "0",
        "SMSUPER_CACHE_DIR": str(ROOT / ".cache" / "pyz"),
        "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(free_port()),
        "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SMSUPER_RUNTIME_DIR": str(runtime),
    })
    env.update(extra)
    for name in drop:
        env.pop(name, None)
    return env


def start_stack(pyz: Path, directory: Path, code: str, mode: str, address_space: Optional[int] = None,
                drop: tuple = (), **extra: str) -> Server:
    base = serve_layout(directory / "ml", code)
    env = stack_env(base, directory / "run", drop, **extra)
    server = stack_server(pyz, env, base, interpreter(mode), address_space)
    try:
        server.wait_ready()
    except BaseException:
        server.close()
        raise
    return server


def post(server: Server, body, content_type: str, accept: str = "application/json") -> requests.Response:
    response = requests.post(server.url("/invocations"), data=body, timeout=WAIT_LIMIT,
                             headers={"Content-Type": content_type, "Accept": accept})
    # Every status this server gave, for the metrics check (the servers serve a whole module).
    answered = server.__dict__.setdefault("answered", {})
    answered[response.status_code] = answered.get(response.status_code, 0) + 1
    return response


def error_of(response: requests.Response) -> str:
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    return response.json()["error"]


def user_app_service(tmp_path: Path, source: str, spec: str = "predictor:app"):
    """A loaded style B service of the source tree: `source` as predictor.py, SMSUPER_APP=`spec`."""
    from smsuper.serve.config import resolve
    from smsuper.serve.worker.user_app import UserAppService

    program = tmp_path / "program"
    program.mkdir(exist_ok=True)
    (program / "predictor.py").write_text(textwrap.dedent(source))
    sys.modules.pop("predictor", None)
    config = resolve({"SAGEMAKER_BASE_DIR": str(tmp_path / "ml"), "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
                      "SMSUPER_APP": spec})
    old = os.getcwd()
    os.chdir(program)
    try:
        service = UserAppService(config)
        service.load()
    finally:
        os.chdir(old)
    return service


def tiny_wheel(directory: Path) -> str:
    """A wheel of one module, built by hand so pip needs no network and no build backend."""
    name = "smsuper_tinydep-1.0-py3-none-any.whl"
    info = "smsuper_tinydep-1.0.dist-info"
    files = {
        "smsuper_tinydep.py": "ANSWER = 42\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: smsuper-tinydep\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(directory / name, "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)
    return name
