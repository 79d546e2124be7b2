"""Multi-model endpoints (SAGEMAKER_MULTI_MODEL=true) end to end: the built pyz as PID 1 of a new
PID namespace, real nginx, each model in its own real gunicorn processes, real HTTP.

Slow parts (a load, a prediction) wait for files the test creates, so nothing depends on
timing; the time limits are safety nets against a hang, never assertions about speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import requests

from helpers import WAIT_LIMIT, Server, background, eventually, free_port, tiny_wheel, title_of

pytestmark = [pytest.mark.slow,  # serving stacks
              pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                 reason="nginx is not installed (scripts/install-test-deps.sh installs it)")]

# Each model's own code: it answers with its name (from a file beside it) and, for
# {"gate": true}, records itself in GATES/inflight and waits until GATES/open exists.
# Its model_fn waits for GATES/load-NAME when that gate is closed (GATES/hold-NAME exists).
MODEL_CODE = """
import json, os, time, uuid

HERE = os.path.dirname(os.path.abspath(__file__))
GATES = os.environ["TEST_GATES"]

def wait_for(path, limit=120):
    deadline = time.time() + limit
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)

def model_fn(model_dir):
    name = open(os.path.join(HERE, "name.txt")).read()
    open(os.path.join(GATES, f"loading-{name}"), "w").close()
    if os.path.exists(os.path.join(GATES, f"hold-{name}")):
        wait_for(os.path.join(GATES, f"load-{name}"))
    return {"name": name, "model_dir": model_dir}

def predict_fn(data, model, context):
    if isinstance(data, dict) and data.get("die"):
        os.kill(os.getpid(), 9)
    if isinstance(data, dict) and data.get("gate"):
        os.makedirs(os.path.join(GATES, "inflight"), exist_ok=True)
        open(os.path.join(GATES, "inflight", f"{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
        wait_for(os.path.join(GATES, "open"))
    return {"model": model["name"], "model_dir": model["model_dir"], "input": data}
"""

IMAGE_CODE = """
def model_fn(model_dir):
    return model_dir

def predict_fn(data, model):
    return {"model": "the image's handler", "model_dir": model, "input": data}
"""


def descendants(pid: int) -> List[int]:
    parents: Dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    raw = handle.read()
            except OSError:
                continue
            fields = raw[raw.rfind(b")") + 2:].split()
            if fields[0] != b"Z":
                parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent:
                found.append(child)
                frontier.append(child)
    return found


class Endpoint(Server):
    """A multi-model `smsuper serve`, with helpers for the /models routes."""

    def __init__(self, pyz: Path, env: dict, base: Path, models: Path, gates: Path, cgroup: Optional[str] = None,
                 python_flags: tuple = ()):
        self.models = models
        self.gates = gates
        self.env = env
        # As Server does, with PID 1's Python flags, and in memory cgroup `cgroup` when given.
        self.base = base
        self.port = int(env["SAGEMAKER_BIND_TO_PORT"])
        self.stdout_path = base.parent / "stdout.txt"
        self.stderr_path = base.parent / "stderr.txt"
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, *python_flags,
                str(pyz), "serve"]
        if cgroup is not None:
            argv = ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", cgroup, *argv]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=str(base), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err)

    def model(self, name: str, code: str = MODEL_CODE, root: str = "") -> str:
        """Lay out model `name` as the platform extracts it; returns its url."""
        url = self.models / name / "model"
        code_dir = url / root / "code" if root else url / "code"
        code_dir.mkdir(parents=True, exist_ok=True)
        (code_dir / "inference.py").write_text(textwrap.dedent(code))
        (code_dir / "name.txt").write_text(name)
        return str(url)

    def load(self, name: str, url: Optional[str] = None, **headers: str) -> requests.Response:
        body = {"model_name": name, "url": url if url is not None else self.model(name)}
        return requests.post(self.url("/models"), data=json.dumps(body), headers=headers, timeout=WAIT_LIMIT)

    def invoke(self, name: str, data, **headers: str) -> requests.Response:
        return requests.post(self.url(f"/models/{name}/invoke"), data=json.dumps(data),
                             headers={"Content-Type": "application/json", **headers}, timeout=WAIT_LIMIT)

    def unload(self, name: str) -> requests.Response:
        return requests.delete(self.url(f"/models/{name}"), timeout=WAIT_LIMIT)

    def listing(self, **query: str) -> requests.Response:
        return requests.get(self.url("/models"), params=query, timeout=WAIT_LIMIT)

    def processes_of(self, name: str) -> List[int]:
        """The live processes of model `name` (its gunicorn master and workers)."""
        return [pid for pid in descendants(self.proc.pid)
                if f"[smsuper model {name}]" in title_of(pid) or f"--name {name} " in title_of(pid) + " "]

    def in_flight(self) -> int:
        directory = self.gates / "inflight"
        return len(os.listdir(directory)) if directory.exists() else 0

    def metrics(self) -> str:
        port = int(self.env["SMSUPER_METRICS_PORT"])
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_LIMIT).text


@pytest.fixture()
def endpoint(pyz, base_env, tmp_path):
    """endpoint(image_code=..., **env): a started multi-model server, ready; all are killed at the end."""
    started: List[Endpoint] = []

    def start(image_code: Optional[str] = None, ready: bool = True, cgroup: Optional[str] = None,
              python_flags: tuple = (), **extra: str) -> Endpoint:
        base = tmp_path / "ml"
        (base / "code").mkdir(parents=True, exist_ok=True)
        if image_code is not None:
            (base / "code" / "inference.py").write_text(textwrap.dedent(image_code))
        gates = tmp_path / "gates"
        gates.mkdir(exist_ok=True)
        env = dict(base_env)
        for name in ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SMSUPER_APP",
                     "SAGEMAKER_MODEL_SERVER_WORKERS"):
            env.pop(name, None)
        env.update({"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_BASE_DIR": str(base),
                    "SAGEMAKER_BIND_TO_PORT": str(free_port()), "SMSUPER_RUNTIME_DIR": str(tmp_path / "run"),
                    "SMSUPER_METRICS_PORT": str(free_port()), "TEST_GATES": str(gates)})
        env.update(extra)
        server = Endpoint(pyz, env, base, tmp_path / "models", gates, cgroup, python_flags)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.close()


# ---- the routes ---------------------------------------------------------------------------------

def test_three_models_are_loaded_listed_invoked_and_unloaded_with_their_processes(endpoint):
    server = endpoint()
    for name in ("alpha", "beta", "gamma"):
        loaded = server.load(name)
        assert loaded.status_code == 200, loaded.text
    first = server.listing(limit="2")
    assert first.status_code == 200
    assert [m["modelName"] for m in first.json()["models"]] == ["alpha", "beta"]
    token = first.json()["nextPageToken"]
    last = server.listing(limit="2", next_page_token=token).json()
    assert [m["modelName"] for m in last["models"]] == ["gamma"]
    assert "nextPageToken" not in last
    described = requests.get(server.url("/models/beta"), timeout=WAIT_LIMIT)
    assert described.json() == {"modelName": "beta", "modelUrl": str(server.models / "beta" / "model")}

    for name in ("alpha", "beta", "gamma"):
        answer = server.invoke(name, [1, 2])
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == name and answer.json()["input"] == [1, 2]
    assert 'smsuper_models_loaded 3' in server.metrics()
    # nginx flushes its access log, which PID 1 counts, once a second.
    eventually(lambda: 'smsuper_model_requests_total{model="alpha",code="200"} 1' in server.metrics(),
               "alpha's invocation to be counted")

    for name in ("alpha", "beta", "gamma"):
        processes = server.processes_of(name)
        assert len(processes) == 2, f"{name}: one master and one worker by default, got {processes}"
        assert server.unload(name).status_code == 200
        # When DELETE has answered, the model's processes (and so their memory) are gone.
        assert server.processes_of(name) == [] and not any(os.path.exists(f"/proc/{p}") and
                                                           title_of(p) for p in processes)
        assert server.invoke(name, [1]).status_code == 404
    assert server.listing().json() == {"models": []}
    metrics = server.metrics()
    assert "smsuper_models_loaded 0" in metrics
    assert 'model="alpha"' not in metrics  # per-model series only while the model is loaded
    assert 'smsuper_model_unloads_total{outcome="ok"} 3' in metrics


def test_conflicts_absent_models_and_bad_requests_get_clear_statuses(endpoint):
    server = endpoint()
    assert server.load("alpha").status_code == 200
    again = server.load("alpha")
    assert again.status_code == 409 and "already loaded" in again.json()["error"]
    for response in (requests.get(server.url("/models/nothere"), timeout=WAIT_LIMIT),
                     server.unload("nothere"), server.invoke("nothere", [1])):
        assert response.status_code == 404, response.text
        assert "not loaded" in response.json()["error"]
    bad_name = server.load("../etc", url=server.model("alpha"))
    assert bad_name.status_code == 400 and "model_name" in bad_name.json()["error"]
    not_json = requests.post(server.url("/models"), data="{", timeout=WAIT_LIMIT)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
    relative = server.load("beta", url="models/beta")
    assert relative.status_code == 400 and "absolute" in relative.json()["error"]
    missing = server.load("gamma", url=str(server.models / "gamma-is-not-there"))
    assert missing.status_code == 400 and "not a directory" in missing.json()["error"]
    assert server.listing(limit="0").status_code == 400
    plain = requests.post(server.url("/invocations"), data="[1]", headers={"Content-Type": "application/json"},
                          timeout=WAIT_LIMIT)
    assert plain.status_code == 400 and "/models/NAME/invoke" in plain.json()["error"]
    wrong_method = requests.put(server.url("/models/alpha"), timeout=WAIT_LIMIT)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "GET, DELETE"
    assert server.invoke("alpha", [1]).status_code == 200  # none of it disturbed the loaded model


def test_without_the_variable_the_models_routes_do_not_exist(endpoint):
    server = endpoint(image_code=IMAGE_CODE, SAGEMAKER_MULTI_MODEL="false")
    assert requests.get(server.url("/models"), timeout=WAIT_LIMIT).status_code == 404
    answer = requests.post(server.url("/invocations"), data="[3]", headers={"Content-Type": "application/json"},
                           timeout=WAIT_LIMIT)
    assert answer.status_code == 200 and answer.json()["input"] == [3]


# ---- where each model's code and files are --------------------------------------------------------

def test_a_single_sub_directory_is_descended_and_each_model_has_its_own_code(endpoint):
    server = endpoint(image_code=IMAGE_CODE)
    rooted = server.model("rooted", root="model-root")  # a tarball with one root directory
    assert server.load("rooted", rooted).status_code == 200
    answer = server.invoke("rooted", [1]).json()
    assert answer["model"] == "rooted" and answer["model_dir"] == os.path.join(rooted, "model-root")

    bare = server.models / "bare" / "model"  # no code of its own: the image's handler module
    bare.mkdir(parents=True)
    (bare / "weights.bin").write_bytes(b"\0")
    assert server.load("bare", str(bare)).status_code == 200
    answer = server.invoke("bare", [2]).json()
    assert answer["model"] == "the image's handler" and answer["model_dir"] == str(bare)
    assert server.invoke("rooted", [3]).json()["model"] == "rooted"


def test_the_target_model_header_is_logged_with_the_request(endpoint):
    server = endpoint()
    assert server.load("alpha", **{"X-Amzn-SageMaker-Target-Model": "client/alpha.tar.gz"}).status_code == 200
    server.invoke("alpha", [1], **{"X-Amzn-SageMaker-Target-Model": "client/alpha.tar.gz"})
    eventually(lambda: server.stdout().count('target_model="client/alpha.tar.gz"') >= 2,
               "the access log lines of the load and the invocation")


# ---- failed loads -----------------------------------------------------------------------------------

def test_a_load_that_raises_gives_its_reason_and_the_model_is_not_registered(endpoint):
    server = endpoint()
    url = server.model("broken", code="def model_fn(model_dir):\n    raise ValueError('the weights are corrupt')\n")
    failed = server.load("broken", url)
    assert failed.status_code == 500
    assert "ValueError: the weights are corrupt" in failed.json()["error"]
    assert server.listing().json() == {"models": []}
    assert requests.get(server.url("/models/broken"), timeout=WAIT_LIMIT).status_code == 404
    assert server.processes_of("broken") == []
    assert server.load("broken", url).status_code == 500  # not registered: loading again is no 409
    assert 'smsuper_model_loads_total{outcome="failed"} 2' in server.metrics()


def test_running_out_of_memory_while_loading_is_507_and_the_others_keep_answering(endpoint):
    server = endpoint()
    assert server.load("alpha").status_code == 200
    # More than any machine has: the kernel refuses the allocation and Python raises MemoryError.
    greedy = server.model("greedy", code="def model_fn(model_dir):\n    return bytearray(1 << 50)\n")
    refused = server.load("greedy", greedy)
    assert refused.status_code == 507, refused.text
    assert "out of memory" in refused.json()["error"]
    # The kernel's OOM killer ends a process with SIGKILL: a load that dies so is 507 as well.
    killed = server.model("killed", code="import os, signal\n\ndef model_fn(model_dir):\n"
                                         "    os.kill(os.getpid(), signal.SIGKILL)\n")
    refused = server.load("killed", killed)
    assert refused.status_code == 507 and "SIGKILL" in refused.json()["error"]
    assert server.processes_of("greedy") == [] and server.processes_of("killed") == []
    assert server.invoke("alpha", [1]).status_code == 200
    assert server.ping().status_code == 200
    assert 'smsuper_model_loads_total{outcome="no_memory"} 2' in server.metrics()


# ---- nothing waits for a load, unloads drain --------------------------------------------------------

def test_a_model_answers_while_another_loads_and_loads_run_side_by_side(endpoint):
    server = endpoint()
    assert server.load("alpha").status_code == 200
    (server.gates / "hold-slow").touch()
    slow = background(lambda: server.load("slow"))
    eventually(lambda: (server.gates / "loading-slow").exists(), "slow's model_fn to start")
    for attempt in range(3):
        answer = server.invoke("alpha", [attempt])
        assert answer.status_code == 200 and answer.json()["input"] == [attempt]
        assert server.ping().status_code == 200
    assert server.load("beta").status_code == 200  # a second load while the first is still going
    assert server.invoke("beta", [1]).status_code == 200
    listed = [m["modelName"] for m in server.listing().json()["models"]]
    assert listed == ["alpha", "beta"]  # slow is not loaded yet
    assert server.load("slow").status_code == 409
    (server.gates / "load-slow").touch()
    assert slow().status_code == 200
    assert server.invoke("slow", [1]).json()["model"] == "slow"


def test_delete_of_a_loading_model_cancels_the_load_and_frees_it(endpoint):
    server = endpoint()
    (server.gates / "hold-slow").touch()
    slow = background(lambda: server.load("slow"))
    eventually(lambda: (server.gates / "loading-slow").exists(), "slow's model_fn to start")
    processes = server.processes_of("slow")
    assert processes
    deleted = server.unload("slow")
    assert deleted.status_code == 200, deleted.text
    # When DELETE has answered, the loading model's processes are gone; its POST says why.
    assert not any(os.path.exists(f"/proc/{pid}") and title_of(pid) for pid in processes)
    cancelled = slow()
    assert cancelled.status_code == 500 and "unloaded (DELETE) before its load finished" in cancelled.json()["error"]
    assert server.listing().json() == {"models": []}
    assert server.invoke("slow", [1]).status_code == 404
    (server.gates / "hold-slow").unlink()
    assert server.load("slow").status_code == 200  # not registered: it loads again
    assert server.invoke("slow", [2]).json()["input"] == [2]


def _backlog(socket_path: str) -> int:
    """Connections waiting to be accepted on a listening unix socket (its Recv-Q)."""
    out = subprocess.run(["ss", "-xlnH"], stdout=subprocess.PIPE, text=True, check=False).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[4] == socket_path:
            return int(fields[2])
    return 0


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) shows a socket's backlog")
def test_unload_answers_every_request_already_routed_to_the_model_then_its_processes_are_gone(endpoint):
    server = endpoint(SAGEMAKER_MODEL_SERVER_WORKERS="2")
    assert server.load("alpha").status_code == 200
    # master + 2 workers (a worker's guard shows the worker's title for a moment after its fork)
    eventually(lambda: len(server.processes_of("alpha")) == 3, "alpha's master and 2 workers")
    held = [background(lambda: server.invoke("alpha", {"gate": True})) for _ in range(2)]
    eventually(lambda: server.in_flight() == 2, "both workers to hold a request")
    queued = background(lambda: server.invoke("alpha", {"queued": True}))
    sock = str(Path(server.env["SMSUPER_RUNTIME_DIR"]) / "shared" / "m" / "alpha")
    eventually(lambda: _backlog(sock) == 1, "the third request to wait in the model's backlog")
    processes = server.processes_of("alpha")
    unloading = background(lambda: server.unload("alpha"))
    marker = Path(server.env["SMSUPER_RUNTIME_DIR"]) / "models" / "alpha" / "serving"
    eventually(lambda: not marker.exists(), "PID 1 to stop routing to alpha")
    refused = server.invoke("alpha", [1])
    assert refused.status_code == 404 and "not loaded" in refused.json()["error"]
    assert server.processes_of("alpha") == processes  # still draining: nothing was killed
    (server.gates / "open").touch()
    for request in held:
        answer = request()
        assert answer.status_code == 200 and answer.json()["input"] == {"gate": True}
    answer = queued()
    assert answer.status_code == 200 and answer.json()["input"] == {"queued": True}
    assert unloading().status_code == 200
    assert server.processes_of("alpha") == []


def test_sigterm_with_models_loaded_answers_what_is_in_flight_and_stops_everything(endpoint):
    server = endpoint()
    for name in ("alpha", "beta", "gamma"):
        assert server.load(name).status_code == 200
    held = background(lambda: server.invoke("beta", {"gate": True}))
    eventually(lambda: server.in_flight() == 1, "beta's worker to hold a request")
    init = server.init_pid()
    everything = descendants(init)
    os.kill(init, signal.SIGTERM)
    eventually(lambda: "stopping (received SIGTERM)" in server.stderr() + server.stdout(), "PID 1 to stop")
    (server.gates / "open").touch()
    answer = held()
    assert answer.status_code == 200 and answer.json()["model"] == "beta"
    assert server.proc.wait(timeout=WAIT_LIMIT) == 0
    assert not [pid for pid in everything if os.path.exists(f"/proc/{pid}") and title_of(pid)]


# ---- 507 before the OOM killer: a real memory cgroup -------------------------------------------------

def _own_memory_cgroup() -> Optional[Path]:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
                if (candidate / "memory.limit_in_bytes").exists():
                    return candidate
    except OSError:
        pass
    return None


@pytest.fixture()
def memory_cgroup():
    """A child of this test's own memory cgroup (v1) with a 1000 MiB limit, removed afterwards."""
    parent = _own_memory_cgroup()
    if parent is None or not os.access(parent, os.W_OK):
        pytest.skip("needs a writable cgroup v1 memory hierarchy (this machine's kind has one)")
    group = parent / f"smsuper-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(1000 * 1024 * 1024))
    yield str(group)
    eventually(lambda: not (group / "cgroup.procs").read_text().split(), "the cgroup to empty")
    group.rmdir()


BIG_MODEL = """
import os
import re

def model_fn(model_dir):
    size = int(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mib.txt")).read())
    return b"x" * (size * 1024 * 1024)  # written, so resident: what a real model's weights are

def predict_fn(data, model):
    return {"bytes": len(model)}
"""


def test_under_a_memory_limit_an_oom_killed_load_and_a_load_that_would_not_fit_are_507(endpoint, memory_cgroup):
    server = endpoint(cgroup=memory_cgroup)
    urls = {}
    for name, mib in (("huge", 2048), ("one", 300), ("two", 300), ("three", 300)):
        urls[name] = server.model(name, code=BIG_MODEL)
        Path(urls[name], "code", "mib.txt").write_text(str(mib))
    # Nothing is loaded, so nothing says how large a model is: the load starts, outgrows the
    # limit, and the kernel's OOM killer ends it with SIGKILL.
    killed = server.load("huge", urls["huge"])
    assert killed.status_code == 507 and "SIGKILL" in killed.json()["error"], killed.text
    assert server.processes_of("huge") == []
    for name in ("one", "two"):
        loaded = server.load(name, urls[name])
        assert loaded.status_code == 200, loaded.text
    # Two models of ~330 MiB each are in 1000 MiB: a third would leave less than the 128 MiB margin.
    refused = server.load("three", urls["three"])
    assert refused.status_code == 507 and "not enough memory" in refused.json()["error"], refused.text
    assert server.processes_of("three") == []  # refused before anything started
    for name in ("one", "two"):
        assert server.invoke(name, [1]).json() == {"bytes": 300 * 1024 * 1024}
    assert server.ping().status_code == 200
    assert server.unload("two").status_code == 200  # the platform makes room, then retries
    assert server.load("three", urls["three"]).status_code == 200
    assert server.terminate() == 0


def test_a_model_whose_master_is_killed_is_unregistered_and_the_others_keep_answering(endpoint):
    server = endpoint()
    for name in ("alpha", "beta"):
        assert server.load(name).status_code == 200
    died = server.invoke("alpha", {"die": True})  # its worker dies: that request fails, the model stays
    assert died.status_code == 502 and "worker died" in died.json()["error"]
    eventually(lambda: server.invoke("alpha", [0]).status_code == 200, "alpha's new worker to answer")
    init = server.init_pid()
    [master] = [pid for pid in server.processes_of("alpha") if pid in descendants(init)
                and Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1] == str(init).encode()]
    os.kill(master, signal.SIGKILL)
    eventually(lambda: server.processes_of("alpha") == [], "alpha's processes to go")
    eventually(lambda: server.invoke("alpha", [1]).status_code == 404, "alpha to be unregistered")
    assert [m["modelName"] for m in server.listing().json()["models"]] == ["beta"]
    assert server.invoke("beta", [1]).status_code == 200
    assert server.ping().status_code == 200
    assert server.load("alpha").status_code == 200  # the platform loads it again
    assert server.invoke("alpha", [2]).json()["input"] == [2]


def _stat_fields(pid: int) -> List[bytes]:
    return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()


def _template_of(server) -> int:
    """The pre-started template process (PID 1's child titled `smsuper model template`)."""
    init = server.init_pid()

    def found() -> List[int]:
        return [pid for pid in descendants(init) if "smsuper model template" in title_of(pid)]

    eventually(lambda: len(found()) == 1, "one model template process")
    return found()[0]


def test_a_model_is_forked_from_the_pre_started_template_and_pid1_supervises_it(endpoint):
    server = endpoint()
    init = server.init_pid()
    template = _template_of(server)
    assert int(_stat_fields(template)[1]) == init
    # Until its imports are done, loads start afresh (PID 1 never waits for them).
    eventually(lambda: "the model template is ready" in server.stderr(), "the template to be ready")
    assert server.load("alpha").status_code == 200
    assert "model alpha: forked from the template" in server.stderr()
    [master] = [pid for pid in server.processes_of("alpha") if "master" in title_of(pid)]
    fields = _stat_fields(master)
    # PID 1's own child, in a process group of its own, as a model started afresh is.
    assert int(fields[1]) == init and int(fields[2]) == master
    assert server.invoke("alpha", [1]).json()["input"] == [1]
    os.kill(master, signal.SIGKILL)  # PID 1 sees the exit: the model is unregistered
    eventually(lambda: server.invoke("alpha", [1]).status_code == 404, "alpha to be unregistered")
    assert server.unload("alpha").status_code == 404


def test_a_model_runs_its_master_and_workers_only(endpoint):
    """nginx keeps no connection to a model, so its workers need no keep-alive guard processes."""
    server = endpoint(SAGEMAKER_MODEL_SERVER_WORKERS="2")
    assert server.load("alpha").status_code == 200
    [master] = [pid for pid in server.processes_of("alpha") if "master" in title_of(pid)]
    eventually(lambda: len(descendants(master)) == 2 and
               all("gunicorn: worker [smsuper model alpha]" in title_of(pid) for pid in descendants(master)),
               "alpha's master to have its 2 workers and nothing else")
    for attempt in range(20):
        assert server.invoke("alpha", [attempt]).json()["input"] == [attempt]
    assert len(descendants(master)) == 2


def test_without_its_template_a_model_still_loads_started_afresh(endpoint):
    server = endpoint()
    os.kill(_template_of(server), signal.SIGKILL)
    eventually(lambda: "the model template stopped" in server.stderr(), "PID 1 to notice the template's exit")
    assert server.load("beta").status_code == 200
    assert "model beta: forked from the template" not in server.stderr()
    assert server.invoke("beta", [3]).json()["input"] == [3]
    assert server.unload("beta").status_code == 200
    assert server.ping().status_code == 200


GROWING_CODE = """
HOARD = []

def model_fn(model_dir):
    return "growing"

def predict_fn(data, model):
    HOARD.append(bytearray(b"x") * (data["mib"] << 20))  # a model whose memory grows after its load
    return {"held_mib": sum(len(b) for b in HOARD) >> 20}
"""


def _model_memory(server, name: str) -> int:
    found = re.search(r'smsuper_model_memory_bytes\{model="%s"\} (\S+)' % name, server.metrics())
    return int(float(found.group(1))) if found else 0


def test_a_models_memory_is_measured_again_while_it_is_loaded(endpoint):
    server = endpoint()
    assert server.load("grower", server.model("grower", GROWING_CODE)).status_code == 200
    at_load = _model_memory(server, "grower")
    assert at_load > 0
    assert server.invoke("grower", {"mib": 160}).json() == {"held_mib": 160}
    # The 507 rule judges the next load by what the loaded models take now, not at their load.
    eventually(lambda: _model_memory(server, "grower") >= at_load + (150 << 20),
               "the model's memory to be measured again")


def test_an_invocation_whose_body_arrives_after_its_model_was_unloaded_gets_404_not_502(endpoint):
    server = endpoint()
    assert server.load("alpha").status_code == 200
    body = json.dumps({"late": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_LIMIT) as client:
        client.sendall(b"POST /models/alpha/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body[:3])
        assert server.unload("alpha").status_code == 200  # meanwhile nginx waits for the rest of the body
        client.sendall(body[3:])
        answer = b""
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            answer += chunk
    status = answer.split(b"\r\n", 1)[0]
    assert status == b"HTTP/1.1 404 Not Found", answer
    assert b"not loaded" in answer


def test_a_reused_runtime_directory_after_a_killed_run_serves_again(endpoint):
    first = endpoint()
    assert first.load("alpha").status_code == 200
    first.close()  # SIGKILL to the whole namespace: nothing was cleaned up
    second = endpoint()  # the same SMSUPER_RUNTIME_DIR, with the killed run's models/ in it
    assert second.listing().json() == {"models": []}
    assert second.load("alpha").status_code == 200
    assert second.invoke("alpha", [1]).json()["model"] == "alpha"


def test_a_sha256_long_name_is_served_and_a_name_too_long_for_a_socket_path_is_refused(endpoint):
    runtime = tempfile.mkdtemp(prefix="smsuper-mm-", dir="/tmp")  # as short as the default place
    try:
        server = endpoint(SMSUPER_RUNTIME_DIR=runtime)
        name = hashlib.sha256(b"model").hexdigest()  # 64 characters, as a platform's hash may be
        assert server.load(name, server.model("hashed")).status_code == 200
        assert server.invoke(name, [1]).json()["model"] == "hashed"
        too_long = "m" * 100
        refused = server.load(too_long, server.model("hashed"))
        assert refused.status_code == 400 and "SMSUPER_RUNTIME_DIR" in refused.json()["error"], refused.text
        assert server.terminate() == 0
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


MODEL_SIDE = re.compile(r"\|\s+(smsuper\.(?:serve\.(?:master|worker|multimodel\.(?:master|worker))|metrics\.worker)"
                        r"\b[\w.]*)")


def test_pid1_of_a_multi_model_endpoint_imports_nothing_of_the_models_processes(endpoint):
    # -X importtime on PID 1 alone (its children start without it): what PID 1 imported, through
    # a load, an invocation, a listing, an unload and the stop.
    server = endpoint(python_flags=("-X", "importtime"))
    assert server.load("alpha").status_code == 200
    assert server.invoke("alpha", [1]).status_code == 200
    assert server.listing().status_code == 200
    assert server.unload("alpha").status_code == 200
    assert server.terminate() == 0
    imports = server.stderr()
    assert "smsuper.serve.multimodel.manager" in imports  # -X importtime did reach PID 1
    assert MODEL_SIDE.findall(imports) == []


NEEDS_TINYDEP = """
import smsuper_tinydep

def model_fn(model_dir):
    return smsuper_tinydep.ANSWER

def predict_fn(data, model):
    return {"answer": model}
"""


def test_each_model_gets_its_own_requirements_installed_and_no_other_model_sees_them(endpoint):
    server = endpoint(PIP_NO_INDEX="1")  # the wheel is local: no network
    url = server.model("needs", code=NEEDS_TINYDEP)
    wheel = tiny_wheel(Path(url) / "code")
    (Path(url) / "code" / "requirements.txt").write_text(f"./{wheel}\n")
    loaded = server.load("needs", url)
    assert loaded.status_code == 200, loaded.text
    assert server.invoke("needs", [1]).json() == {"answer": 42}
    # Installed into that model's own directory: another model without the requirement cannot import it.
    other = server.load("other", server.model("other", code=NEEDS_TINYDEP))
    assert other.status_code == 500 and "No module named 'smsuper_tinydep'" in other.json()["error"]
    assert server.unload("needs").status_code == 200


def test_a_model_with_requirements_is_refused_when_installs_are_off(endpoint):
    server = endpoint(SMSUPER_INSTALL_REQUIREMENTS="false")
    url = server.model("needs", code=NEEDS_TINYDEP)
    (Path(url) / "code" / "requirements.txt").write_text("smsuper-tinydep\n")
    refused = server.load("needs", url)
    assert refused.status_code == 400 and "SMSUPER_INSTALL_REQUIREMENTS=false" in refused.json()["error"]
    assert server.processes_of("needs") == []
