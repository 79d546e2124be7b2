"""A multi-model endpoint in a real container (podman + runc), as the platform starts it:
`IMAGE serve` with `SAGEMAKER_MULTI_MODEL=true` and the models under /opt/ml/models.

Here the workload runs as `nobody` (smsuper's default), so the boundary between root PID 1
and nginx and the models' processes is the real one: nginx must reach PID 1's management
socket and each model's socket, PID 1 never works in a place they could rearrange.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.slow]  # a real container

try:  # tests/ as a package or as a rootdir on sys.path
    from . import containers
    from .containers import images  # noqa: F401  (fixture)
except ImportError:
    import containers
    from containers import images  # noqa: F401  (fixture)

WAIT_LIMIT = 120  # safety net against a hang, not a speed bound
SUITE = "bookworm"

MODEL = """
    import os

    def model_fn(model_dir):
        return open(os.path.join(model_dir, "name.txt")).read()

    def predict_fn(data, model):
        return {"model": model, "uid": os.getuid(), "input": data}
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lay_out(root: Path, names) -> None:
    for name in names:
        model = root / "models" / name / "model"
        (model / "code").mkdir(parents=True)
        (model / "code" / "inference.py").write_text(textwrap.dedent(MODEL))
        (model / "name.txt").write_text(name)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)


def test_multi_model_endpoint_in_a_container_as_nobody(images, pyz, tmp_path):
    image = images.image(SUITE, pyz)
    root = tmp_path / "ml"
    lay_out(root, ("alpha", "beta"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MULTI_MODEL": "true", "SMSUPER_METRICS_PORT": "0"}
    with containers.detached(image, ["serve"], env=env, extra=["-v", f"{root}:/opt/ml"]) as box:
        box.wait_for_ping(url, WAIT_LIMIT)
        for name in ("alpha", "beta"):
            loaded = requests.post(f"{url}/models", timeout=WAIT_LIMIT,
                                   data=json.dumps({"model_name": name, "url": f"/opt/ml/models/{name}/model"}))
            assert loaded.status_code == 200, f"{loaded.text}\n{box.logs().stderr}"
        assert requests.post(f"{url}/models", timeout=WAIT_LIMIT, data=json.dumps(
            {"model_name": "alpha", "url": "/opt/ml/models/alpha/model"})).status_code == 409
        listed = requests.get(f"{url}/models", timeout=WAIT_LIMIT).json()
        assert [m["modelName"] for m in listed["models"]] == ["alpha", "beta"]
        for name in ("alpha", "beta"):
            answer = requests.post(f"{url}/models/{name}/invoke", data="[1]", timeout=WAIT_LIMIT,
                                   headers={"Content-Type": "application/json"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == name and answer.json()["uid"] == 65534  # nobody, not root
        assert requests.delete(f"{url}/models/alpha", timeout=WAIT_LIMIT).status_code == 200
        assert requests.post(f"{url}/models/alpha/invoke", data="[1]", timeout=WAIT_LIMIT,
                             headers={"Content-Type": "application/json"}).status_code == 404
        stopped = box.stop(30)
        assert box.exit_code() == 0, box.logs().stderr
        assert not stopped.podman_escalated
