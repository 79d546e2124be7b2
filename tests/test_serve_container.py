"""`smsuper serve` in real containers (podman + runc), /opt/ml mounted, on every Debian suite.

bullseye brings Python 3.9 and nginx 1.18 (older than `-e stderr`), sid Python
3.14 and the newest nginx.

The image is what a user builds (COPY the pyz, exec-form ENTRYPOINT), and it
has neither Flask nor numpy: everything comes from the pyz. The container is
started as the platform starts it, `IMAGE serve`, with a model mounted at
/opt/ml: predictions over HTTP, then `podman stop` while requests are in
flight: every one of them completes and the container exits 0 by itself.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from helpers import free_port

import containers

pytestmark = [pytest.mark.slow]  # real containers

STOP_TIMEOUT = 30
WAIT_LIMIT = 120  # safety net against a hang, not a speed bound
# Behavioural bound: reaching it would mean podman's SIGKILL ended the container.
WELL_UNDER_TIMEOUT = 25

MODEL = """
    import os, time, uuid

    BASE = "/opt/ml"

    def model_fn(model_dir):
        with open(os.path.join(model_dir, "weights.txt")) as handle:
            return float(handle.read())

    def predict_fn(data, model):
        if isinstance(data, dict) and data.get("gate"):
            os.makedirs(os.path.join(BASE, "inflight"), exist_ok=True)
            open(os.path.join(BASE, "inflight", uuid.uuid4().hex), "w").close()
            deadline = time.time() + 120
            while not os.path.exists(os.path.join(BASE, "open")) and time.time() < deadline:
                time.sleep(0.01)
            return {"gated": True}
        return [[model * value for value in row] for row in data]
"""


@pytest.fixture(scope="module", params=list(containers.SUITES))
def suite_image(request, images, pyz):
    return request.param, images.image(request.param, pyz)


def opt_ml(root: Path) -> Path:
    (root / "model" / "code").mkdir(parents=True)
    (root / "model" / "code" / "inference.py").write_text(textwrap.dedent(MODEL))
    (root / "model" / "weights.txt").write_text("10")
    for path in (root, root / "model", root / "model" / "code"):
        path.chmod(0o777)
    return root


def nginx_writing(metrics_port: int) -> int:
    """Requests nginx is handling now (stub_status, through smsuper's metrics), the scrape's own included."""
    text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    found = re.search(r'^smsuper_nginx_connections\{state="writing"\} (\d+)', text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def in_flight(root: Path) -> int:
    directory = root / "inflight"
    return len(os.listdir(directory)) if directory.exists() else 0


def test_serve_in_a_container_then_stop_with_requests_in_flight(suite_image, tmp_path):
    suite, image = suite_image
    root = opt_ml(tmp_path / "ml")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    metrics_port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MODEL_SERVER_WORKERS": "2",
           "SMSUPER_METRICS_PORT": str(metrics_port)}
    with containers.detached(image, ["serve"], env=env, extra=["-v", f"{root}:/opt/ml"]) as box:
        box.wait_for_ping(url, WAIT_LIMIT)

        answer = requests.post(f"{url}/invocations", data="1,2\n3,4\n", headers={"Content-Type": "text/csv"},
                               timeout=WAIT_LIMIT)
        assert answer.status_code == 200 and answer.json() == [[10.0, 20.0], [30.0, 40.0]]
        assert requests.get(f"{url}/nothing", timeout=10).status_code == 404

        # Two requests hold both workers, a third waits in gunicorn's socket.
        results: list = []

        def gated() -> None:
            try:
                results.append(requests.post(f"{url}/invocations", data=json.dumps({"gate": True}),
                                             headers={"Content-Type": "application/json"}, timeout=WAIT_LIMIT))
            except requests.RequestException as error:
                results.append(error)

        clients = [threading.Thread(target=gated) for _ in range(3)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + WAIT_LIMIT
        while in_flight(root) < 2:
            assert time.monotonic() < deadline, "the gated requests never reached the workers"
            time.sleep(0.05)
        # In flight means nginx holds all three (the scrape's own request makes four).
        while nginx_writing(metrics_port) < 4:
            assert time.monotonic() < deadline, "nginx never held the three requests"
            time.sleep(0.05)

        stopped: list = []
        stopper = threading.Thread(target=lambda: stopped.append(box.stop(STOP_TIMEOUT)))
        stopper.start()
        deadline = time.monotonic() + WAIT_LIMIT
        while "received SIGTERM" not in box.logs().stderr:
            assert time.monotonic() < deadline, "the container never got SIGTERM"
            time.sleep(0.05)
        (root / "open").touch()
        for client in clients:
            client.join(WAIT_LIMIT)
        stopper.join(WAIT_LIMIT)
        logs = box.logs()
        detail = f"stdout: {logs.stdout}\nstderr: {logs.stderr}\npodman stop: {stopped[0].stderr if stopped else ''}"
        assert [getattr(r, "status_code", r) for r in results] == [200, 200, 200], detail
        assert stopped and stopped[0].seconds < WELL_UNDER_TIMEOUT and not stopped[0].podman_escalated, detail
        containers.report(f"{suite}: serve, podman stop -t {STOP_TIMEOUT} with 3 requests in flight: "
                          f"{stopped[0].seconds:.2f}s")
        assert box.exit_code() == 0, detail
    assert '"POST /invocations HTTP/1.1" 200' in logs.stdout  # the access log reached stdout
