"""PID 1 of `serve` imports none of the code that runs in the gunicorn processes.

The layout says which process runs a file (smsuper/serve/__init__.py): serve/master/ and
serve/worker/ run in gunicorn's master and workers, metrics/worker/ too. PID 1 importing one of
them would carry Flask's or the codecs' memory for the whole life of the container. Python's
`-X importtime` on PID 1 alone (its children are started without it) lists what PID 1 imported,
through the whole job: start, a request answered, a scrape of its metrics, the stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import requests

from helpers import WAIT_LIMIT, eventually, free_port, in_namespace, init_pid, scrape, serve_layout

pytestmark = [pytest.mark.slow]  # a serving stack

GUNICORN_SIDE = re.compile(r"\|\s+(smsuper\.(?:serve\.(?:master|worker)|metrics\.worker)\b[\w.]*)")


def test_pid1_of_serve_imports_nothing_of_the_gunicorn_master_or_workers(pyz, base_env, tmp_path):
    base = serve_layout(tmp_path / "ml")
    port, metrics_port = free_port(), free_port()
    env = dict(base_env, SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(port),
               SMSUPER_METRICS_PORT=str(metrics_port), SAGEMAKER_MODEL_SERVER_WORKERS="1",
               SMSUPER_RUNTIME_DIR=str(tmp_path / "run"))
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(in_namespace(sys.executable, "-X", "importtime", str(pyz), "serve"),
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        def answered() -> bool:
            try:
                return requests.post(f"http://127.0.0.1:{port}/invocations", json=[1], timeout=5).json() == [1]
            except (requests.RequestException, ValueError):
                return False

        eventually(answered, "an invocation answered")
        assert "smsuper_http_requests" in scrape(metrics_port)
        os.kill(init_pid(proc.pid), signal.SIGTERM)  # PID 1 of the namespace
        assert proc.wait(timeout=WAIT_LIMIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    imports = stderr_path.read_text(errors="replace")
    assert "smsuper.serve.job" in imports  # -X importtime did reach PID 1
    assert GUNICORN_SIDE.findall(imports) == []
