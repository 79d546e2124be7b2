"""What each job's PID 1 imports: the rules its modules state about imports, kept.

PID 1 lives as long as the container and its memory is never given back, so what it imports
is RSS for the whole job. Measured on Debian's CPython 3.11 (VmRSS of PID 1, idle, median of
three; `typing` preloaded through a sitecustomize for the comparison):

    job           PID 1 RSS    with typing preloaded
    pass-through  12.5 MiB     13.0 MiB (+0.5)
    train         16.5 MiB     16.5 MiB (already loads it)
    serve         16.0 MiB     16.0 MiB (already loads it)

So `TYPE_CHECKING = False` instead of importing typing pays in the modules the pass-through
job's PID 1 runs, and there it is kept: that PID 1 loads none of the modules below. The serve
job's PID 1 keeps the same start-up conveniences out (typing, subprocess for `nginx -V`, shutil
for a `which`, tempfile for one directory: together about 2 MB of a PID 1 that lives as long as
the endpoint). The train job's own modules import typing, dataclasses, tempfile, subprocess and
shutil; the rule for every job is that PID 1 never loads what belongs to the servers' processes
and to the user's code (Flask, gunicorn, prometheus_client, ...): those are the gunicorn processes'.

Each case runs the built pyz as PID 1 of a PID namespace with `python -X importtime` and reads
which modules PID 1 imported (its children are started without the flag), without `site` (-S):
what an image's site-packages import at startup is not PID 1's doing, and would hide what is.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Set

import pytest

from helpers import (WAIT_LIMIT, eventually, free_port, in_namespace, init_pid, serve_environment, serve_layout,
                     train_environment, train_layout, wait_for_ping)

# What the pass-through job's PID 1 does without (each comment says what would pull it in).
PASSTHROUGH_NEVER = {
    "typing": "an annotation import outside `if TYPE_CHECKING:`",
    "dataclasses": "a @dataclass (it imports inspect, ast, copy...)",
    "tempfile": "a temporary file (it imports shutil, random...)",
    "subprocess": "a subprocess.run (PID 1 spawns with os.posix_spawn / fork)",
    "shutil": "shutil.which or a copy",
    "inspect": "inspect, directly or through dataclasses",
    "threading": "a thread in PID 1 (its loop is single-threaded)",
}
# What the serve job's PID 1 does without, metrics on (each was a start-up convenience).
SERVE_NEVER = {
    "typing": "an annotation import outside `if TYPE_CHECKING:`",
    "dataclasses": "a @dataclass (it imports inspect, ast, copy...)",
    "subprocess": "nginx -V through subprocess.run (init/capture.py runs such helpers)",
    "shutil": "shutil.which (init/capture.find_program looks up a program)",
    "tempfile": "tempfile.mkdtemp (serve/runtime.py makes the runtime directory itself)",
    "threading": "a thread in PID 1, or subprocess",
}
# What no job's PID 1 loads: the libraries of the servers' processes and of the metrics client.
NO_PID1_EVER = ["flask", "werkzeug", "jinja2", "gunicorn", "prometheus_client", "setproctitle._setproctitle_stub",
                "asyncio", "logging", "http.client", "urllib.request", "email", "numpy"]

TRAIN_SCRIPT = "import time\nprint('ready', flush=True)\ntime.sleep(300)\n"


def pid1_modules(stderr: str) -> Set[str]:
    """Modules in `python -X importtime` output, but those the interpreter's startup (site) imported."""
    blocks = []
    block: Set[str] = set()
    for line in stderr.splitlines():
        match = re.match(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)$", line)
        if not match:
            continue
        block.add(match.group(2))
        if len(match.group(1)) == 1:  # a top-level import ends its block (children are printed first)
            blocks.append((match.group(2), block))
            block = set()
    names = [name for name, _ in blocks]
    start = names.index("site") + 1 if "site" in names else 0
    return set().union(*(modules for _, modules in blocks[start:]))


def run_job(pyz: Path, base_env: dict, tmp_path: Path, job: str, metrics: bool = False) -> Set[str]:
    env = dict(base_env, SMSUPER_METRICS_PORT=str(free_port()) if metrics else "0")
    argv = ["sh", "-c", "echo ready; sleep 300"]
    if job == "train":
        env = train_environment(env, train_layout(tmp_path / "ml", TRAIN_SCRIPT), SAGEMAKER_PROGRAM="train.py")
        argv = ["train"]
    elif job == "serve":
        env = serve_environment(env, serve_layout(tmp_path / "ml"), tmp_path / "run",
                                SMSUPER_METRICS_PORT=env["SMSUPER_METRICS_PORT"])
        argv = ["serve"]
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # -S: without site, whose .pth files may import typing first (this machine's do), a module
        # PID 1 imports is seen whatever the interpreter's site-packages hold.
        proc = subprocess.Popen(in_namespace(sys.executable, "-S", "-X", "importtime", str(pyz), *argv), env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        if job == "serve":
            assert wait_for_ping(int(env["SAGEMAKER_BIND_TO_PORT"]), proc) == 200, err_path.read_text()
        else:
            eventually(lambda: b"ready" in out_path.read_bytes() or proc.poll() is not None, "the job to start")
        if metrics:
            import requests
            eventually(lambda: requests.get(f"http://127.0.0.1:{env['SMSUPER_METRICS_PORT']}/metrics",
                                            timeout=5).status_code == 200, "the metrics endpoint")
        assert proc.poll() is None, err_path.read_text()
        import os

        os.kill(init_pid(proc.pid), signal.SIGTERM)  # the stop path's imports count too
        proc.wait(timeout=WAIT_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return pid1_modules(err_path.read_text(errors="replace"))


@pytest.mark.parametrize("metrics", [pytest.param(False, id="metrics-off"),
                                     pytest.param(True, id="metrics-on", marks=pytest.mark.slow)])
def test_the_passthrough_pid1_keeps_typing_and_the_heavy_modules_out(pyz, base_env, tmp_path, metrics):
    modules = run_job(pyz, base_env, tmp_path, "passthrough", metrics)
    assert "smsuper.init.supervisor" in modules  # the measurement sees PID 1's own imports
    loaded = {name: why for name, why in PASSTHROUGH_NEVER.items() if name in modules}
    assert loaded == {}, f"PID 1 of the pass-through job imported these (likely through): {loaded}"


@pytest.mark.slow
@pytest.mark.parametrize("job", ["passthrough", "train", "serve"])
def test_no_pid1_loads_the_servers_or_the_users_libraries(pyz, base_env, tmp_path, job):
    modules = run_job(pyz, base_env, tmp_path, job, metrics=True)
    assert "smsuper.init.supervisor" in modules
    assert sorted(m for m in modules if m.split(".")[0] in NO_PID1_EVER or m in NO_PID1_EVER) == []


@pytest.mark.slow
def test_the_serve_pid1_keeps_the_start_up_conveniences_out(pyz, base_env, tmp_path):
    modules = run_job(pyz, base_env, tmp_path, "serve", metrics=True)
    assert "smsuper.serve.job" in modules and "smsuper.metrics.multiproc" in modules
    loaded = {name: why for name, why in SERVE_NEVER.items() if name in modules}
    assert loaded == {}, f"PID 1 of the serve job imported these (likely through): {loaded}"
