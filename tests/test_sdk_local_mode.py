"""The SageMaker Python SDK's local mode drives a smsuper image, for real, with smsuper's defaults.

The SDK (v2, pinned in pyproject.toml's test extra) is the first thing a bring-your-own-container
user runs before paying for the cloud: `Estimator(..., instance_type="local").fit()` writes a
compose file and runs Docker Compose v2, `deploy()` starts `serve` and waits for /ping,
`predict()` posts to localhost:8080, `delete_endpoint()` stops the container. Here the engine is
podman's Docker API in a network namespace of the test's own (tests/sdk_engine.py); the SDK runs
on the host side of that namespace (tests/sdk_local/drive.py) and the image is a Debian base with
smsuper.pyz and a small pure-Python model (tests/sdk_local/): nothing is mocked, nothing leaves
the machine.

Three ways users meet it: the generic Estimator with a `train` program in the image, the
framework style (SKLearn with entry_point and source_dir, local code), and a two-instance fit
whose hosts find each other by name. No environment override: the image runs with smsuper's
default settings, as a user's would.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

import containers
from sdk_engine import Engine

pytestmark = [pytest.mark.slow]  # the SageMaker SDK driving real containers

SUITE = "bookworm"
HERE = Path(__file__).resolve().parent / "sdk_local"
RUN_LIMIT = 900  # one scenario, fit to delete_endpoint: a safety net against a hang, not a speed bound
STOP_LIMIT = 120  # delete_endpoint to the container's exit (its grace period is 30 s)

# What the container gets on top of the image's defaults: nothing.
ENV: dict = {}

DOCKERFILE = """\
FROM {base}
COPY smsuper.pyz /smsuper.pyz
RUN python3 /smsuper.pyz --version
COPY train /usr/local/bin/train
COPY inference.py /opt/ml/code/inference.py
ENTRYPOINT ["python3", "/smsuper.pyz"]
"""

TRAIN_CSV = "small,1.0,1.0\nsmall,2.0,2.0\nlarge,9.0,9.0\nlarge,10.0,8.0\n"


@pytest.fixture(scope="module")
def image(images, pyz) -> str:
    """The user's image: a base with python3 and nginx, smsuper.pyz as ENTRYPOINT, the code."""
    images.base(SUITE)
    parts = [containers.sha256_file(pyz), DOCKERFILE]
    parts += [(HERE / "image" / name).read_text() for name in ("train", "inference.py")]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    repository = "localhost/smsuper-sdk-test"
    tag = f"{repository}:{key}-{containers.base_key(SUITE)}"
    with containers.file_lock(containers.CACHE_DIR / "sdk-test-image.lock"):
        if not containers.image_exists(tag):
            with tempfile.TemporaryDirectory(prefix="smsuper-image-") as context:
                shutil.copyfile(pyz, Path(context) / "smsuper.pyz")
                for name in ("train", "inference.py"):
                    shutil.copy2(HERE / "image" / name, Path(context) / name)
                Path(context, "Dockerfile").write_text(DOCKERFILE.format(base=containers.base_tag(SUITE)))
                containers.podman("build", "--quiet", "--pull=never", "--network", "host", "-t", tag, context,
                                  timeout=containers.BUILD_TIMEOUT)
            containers.prune_test_images(repository, keep=tag)
    return tag


@pytest.fixture(scope="module")
def engine():
    engine = Engine()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture()
def train_channel(tmp_path) -> Path:
    """A channel anyone may read, so that what the workload sees is what the SDK made of it."""
    channel = tmp_path / "train"
    channel.mkdir(mode=0o755)
    channel.chmod(0o755)
    (channel / "points.csv").write_text(TRAIN_CSV)
    (channel / "points.csv").chmod(0o644)
    return channel


def drive(engine: Engine, tmp_path: Path, **spec) -> dict:
    """Run the SDK (tests/sdk_local/drive.py) inside the engine's namespace; its result."""
    container_root = Path(tempfile.mkdtemp(prefix="sdk-", dir=engine.work))
    container_root.chmod(0o755)
    result_path = tmp_path / "result.json"
    spec.update(container_root=str(container_root), result=str(result_path),
                output_path=f"file://{tmp_path / 'output'}", env=ENV)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    t0 = time.monotonic()
    proc = engine.run([sys.executable, str(HERE / "drive.py"), str(spec_path)], timeout=RUN_LIMIT, env={
        "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKEFAKE", "AWS_SECRET_ACCESS_KEY": "fake",
        "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path),
        "PYTHONUNBUFFERED": "1", "SAGEMAKER_SUPPRESS_V2_WARNING": "1"})
    seconds = time.monotonic() - t0
    print(proc.stdout)  # pytest shows it when the test fails
    said = "\n".join(line for line in proc.stdout.splitlines() if "smsuper: WARNING" in line or "smsuper: ERROR" in line)
    assert proc.returncode == 0 and result_path.exists(), (
        f"the SDK's {spec['scenario']} run failed (exit {proc.returncode}); smsuper said:\n{said}\n"
        f"--- the end of the SDK's output (all of it above) ---\n{proc.stdout[-8000:]}")
    result = json.loads(result_path.read_text())
    result["output"] = proc.stdout
    steps = ", ".join(f"{step} {secs:.1f}s" for step, secs in result["steps"].items())
    containers.report(f"SDK local mode (sagemaker {result['sdk_version']}) {spec['scenario']}: "
                      f"{seconds:.1f}s in all ({steps})")
    return result


def model_files(result: dict) -> dict:
    """name -> parsed JSON of every file in the model.tar.gz the SDK wrote to the file:// output."""
    path = result["model_data"]
    assert path.startswith("file://"), path
    with tarfile.open(path[len("file://"):]) as archive:
        return {member.name.lstrip("./"): json.load(archive.extractfile(member))
                for member in archive.getmembers() if member.isfile()}


def served_containers_exited_cleanly(engine: Engine) -> None:
    """delete_endpoint stops `serve` with SIGTERM: smsuper drains and exits 0, nothing runs on.

    The SDK only terminates its compose process, which then stops the container: wait for it.
    """
    deadline = time.monotonic() + STOP_LIMIT
    while True:
        made = engine.compose_containers(engine.work)
        assert made, "the SDK made no container through the engine"
        running = [entry["Names"] for entry in made if entry["State"] != "exited"]
        if not running:
            break
        assert time.monotonic() < deadline, f"still running {STOP_LIMIT}s after delete_endpoint: {running}"
        time.sleep(0.5)
    served = [entry for entry in made if "serve" in (entry.get("Command") or [])]
    assert served, made
    for entry in served:
        assert entry["ExitCode"] == 0, entry


def test_generic_estimator_fit_deploy_predict_delete(engine, image, train_channel, tmp_path):
    result = drive(engine, tmp_path, scenario="generic", image=image, train=f"file://{train_channel}",
                   deploy=True)
    model = model_files(result)
    assert set(model) == {"model-1.json"}, model
    assert model["model-1.json"]["centroids"] == {"large": [9.5, 8.5], "small": [1.5, 1.5]}
    # CSVSerializer posts "1.0,1.5\n9.0,8.5"; smsuper's CSV answer has one label per line.
    assert result["predictions"] == [["small"], ["large"]], result["output"][-5000:]
    served_containers_exited_cleanly(engine)


def test_framework_estimator_with_local_code(engine, image, train_channel, tmp_path):
    result = drive(engine, tmp_path, scenario="framework", image=image, train=f"file://{train_channel}",
                   source_dir=str(HERE / "framework"), deploy=True,
                   # Without a code location, deploy asks STS for the account to name a default
                   # bucket, even in local mode; with local code nothing is uploaded there.
                   framework={"code_location": "s3://smsuper-local-test/code"})
    model = model_files(result)
    assert model["centroids.json"] == {"large": [9.5, 8.5], "small": [1.5, 1.5]}, model
    assert result["predictions"] == [["small"], ["large"]], result["output"][-5000:]
    served_containers_exited_cleanly(engine)


def test_two_instance_fit(engine, image, train_channel, tmp_path):
    result = drive(engine, tmp_path, scenario="two-hosts", image=image, train=f"file://{train_channel}",
                   instance_count=2)
    model = model_files(result)
    assert set(model) == {"model-1.json", "model-2.json"}, result["output"][-5000:]
    first, second = model["model-1.json"], model["model-2.json"]
    hosts = first["hosts"]
    assert len(hosts) == 2 and second["hosts"] == hosts and [first["host"], second["host"]] == hosts
    # The second host reached the first by name and was heard: the hosts of one job find each other.
    assert first["met"] == [hosts[1]] and second["met"] == ["ok"]
    assert first["centroids"] == second["centroids"] == {"large": [9.5, 8.5], "small": [1.5, 1.5]}
