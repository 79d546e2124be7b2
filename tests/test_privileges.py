"""Non-privileged execution in real containers (podman + runc, Debian bookworm).

None of these runs sets SMSUPER_ALLOW_PRIVILEGED or SMSUPER_USER unless the test is about
them: the container is what the platform starts (root, podman's default capability set, a
seccomp filter). What each workload is, is read from its own /proc/self/status: the training
script writes it next to its model, the serving worker answers it to /invocations, and
nginx's and PID 1's are read from the host's /proc.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import requests

from helpers import free_port

import containers

pytestmark = [pytest.mark.slow]  # real containers

SUITE = "bookworm"
WAIT_LIMIT = 120  # safety net against a hang, not a speed bound
# What PID 1 keeps once its children run (smsuper/init/privileges.py INIT_KEEPS):
# CHOWN, DAC_OVERRIDE, KILL, SETGID, SETUID, SETPCAP.
INIT_KEEPS = sum(1 << bit for bit in (0, 1, 5, 6, 7, 8))

# Reads the caller's own identity and powers, as the kernel reports them.
IDENTITY = """
    def identity():
        fields = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return {"uid": int(fields["Uid"][1]), "gid": int(fields["Gid"][1]),
                "cap_eff": int(fields["CapEff"][0], 16), "cap_bnd": int(fields["CapBnd"][0], 16),
                "no_new_privs": int(fields["NoNewPrivs"][0])}
"""

TRAIN = IDENTITY + """
    import json, os
    me = identity()
    home = os.environ["HOME"]
    with open(os.path.join(home, "written-by-the-script"), "w") as handle:  # HOME is writable
        handle.write("ok")
    me["home"] = home
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as handle:
        json.dump(me, handle)
    print("trained as uid", me["uid"], flush=True)
"""

INFERENCE = IDENTITY + """
    def model_fn(model_dir):
        return "loaded"

    def predict_fn(data, model):
        return identity()
"""


@pytest.fixture(scope="module")
def image(images, pyz) -> str:
    return images.image(SUITE, pyz)


@pytest.fixture(scope="module")
def user_image(image) -> str:
    """The same image with `USER 1000`, the way teams run their code as non-root."""
    tag = f"{image.replace('smsuper-test-', 'smsuper-test-user1000-')}"
    if not containers.image_exists(tag):
        with tempfile.TemporaryDirectory(prefix="smsuper-image-") as context:
            Path(context, "Dockerfile").write_text(
                f"FROM {image}\nRUN useradd --create-home --uid 1000 trainer\nUSER 1000\n")
            containers.podman("build", "--quiet", "--pull=never", "--network", "host", "-t", tag, context,
                              timeout=containers.BUILD_TIMEOUT)
        containers.prune_test_images(tag.rsplit(":", 1)[0], keep=tag)
    return tag


def opt_ml(root: Path, *, world_writable: bool) -> Path:
    """An /opt/ml with training code and serving code, both as the platform mounts them."""
    code = root / "code"
    code.mkdir(parents=True)
    (code / "train.py").write_text(textwrap.dedent(TRAIN))
    (code / "inference.py").write_text(textwrap.dedent(INFERENCE))
    (root / "model").mkdir()
    (root / "output").mkdir()
    # pytest's tmp dirs are 0700 root: the container's unprivileged users must get through.
    for path in [root, *root.parents]:
        if path == Path(tempfile.gettempdir()):
            break
        path.chmod(path.stat().st_mode | 0o711)
    root.chmod(0o755)
    code.chmod(0o755)
    if world_writable:  # an image whose USER is not root cannot chown; the mount must let it write
        for path in (root / "model", root / "output"):
            path.chmod(0o777)
    return root


def train(image: str, root: Path) -> tuple:
    """`IMAGE train` with ROOT at /opt/ml; (what the script said of itself, the job's output)."""
    proc = containers.run(image, ["train"], env={"SAGEMAKER_PROGRAM": "train.py"},
                          extra=["-v", f"{root}:/opt/ml"], timeout=WAIT_LIMIT)
    detail = proc.stdout + proc.stderr
    assert proc.returncode == 0, detail
    return json.loads((root / "model" / "model.json").read_text()), proc  # written unprivileged, kept


@contextlib.contextmanager
def serving(image: str, root: Path):
    """`IMAGE serve` with ROOT at /opt/ml, one worker; yields the container and its URL once /ping is 200."""
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MODEL_SERVER_WORKERS": "1", "SMSUPER_METRICS_PORT": "0"}
    with containers.detached(image, ["serve"], env=env, extra=["-v", f"{root}:/opt/ml"]) as box:
        url = f"http://127.0.0.1:{port}"
        box.wait_for_ping(url, WAIT_LIMIT)
        yield box, url
        box.stop(30)
        assert box.exit_code() == 0, box.logs().stderr


def ask_identity(url: str) -> dict:
    """What the serving worker is, in its own words (INFERENCE's predict_fn)."""
    answer = requests.post(f"{url}/invocations", data="{}", headers={"Content-Type": "application/json"},
                           timeout=WAIT_LIMIT)
    assert answer.status_code == 200, answer.text
    return answer.json()


def status_of(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return {"name": fields["Name"][0], "uid": int(fields["Uid"][1]), "cap_eff": int(fields["CapEff"][0], 16),
            "no_new_privs": int(fields["NoNewPrivs"][0])}


def descendants(pid: int) -> list:
    found, stack = [], [pid]
    while stack:
        for child, _, _ in containers.children_of(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


def assert_unprivileged(me: dict, detail: str = "") -> None:
    assert me["uid"] != 0, detail
    assert me["cap_eff"] == 0, detail
    assert me["no_new_privs"] == 1, detail


# ---- a privileged container -------------------------------------------------------

def test_a_privileged_container_is_refused_with_the_reason_and_the_override(image):
    proc = containers.run(image, ["sh", "-c", "echo ran"], extra=["--privileged"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "ran" not in proc.stdout
    assert "privileged" in proc.stderr and "SMSUPER_ALLOW_PRIVILEGED=1" in proc.stderr, proc.stderr


def test_a_privileged_container_starts_with_the_override(image):
    proc = containers.run(image, ["sh", "-c", "echo ran"], env={"SMSUPER_ALLOW_PRIVILEGED": "1"},
                          extra=["--privileged"])
    assert proc.returncode == 0, proc.stderr
    assert "ran" in proc.stdout


def test_train_refuses_a_privileged_container_in_the_failure_file(image, tmp_path):
    root = opt_ml(tmp_path / "ml", world_writable=False)
    proc = containers.run(image, ["train"], env={"SAGEMAKER_PROGRAM": "train.py"},
                          extra=["--privileged", "-v", f"{root}:/opt/ml"])
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert not (root / "model" / "model.json").exists(), "the script ran in a privileged container"
    assert "SMSUPER_ALLOW_PRIVILEGED" in (root / "output" / "failure").read_text()


# ---- the default: root in the container, workloads as nobody ------------------------

def test_a_passed_through_command_runs_as_nobody_without_capabilities(image):
    proc = containers.run(image, ["sh", "-c", "id -u; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status"])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == "65534", proc.stdout
    assert "0000000000000000" in lines and lines[-1] == "1", proc.stdout


def test_the_training_script_runs_unprivileged_and_its_model_is_kept(image, tmp_path):
    root = opt_ml(tmp_path / "ml", world_writable=False)
    model, proc = train(image, root)
    detail = proc.stdout + proc.stderr
    assert_unprivileged(model, detail)
    assert model["cap_bnd"] == 0, detail
    assert (root / "output" / "success").exists()
    # The directories were handed over to the script's user (it wrote its model), and given back to
    # their owner after the job, with what it wrote; the code was not touched.
    assert (root / "model").stat().st_uid == 0 and (root / "model" / "model.json").stat().st_uid == 0
    assert (root / "code").stat().st_uid == 0


def test_serving_workers_and_nginx_run_unprivileged_and_pid1_keeps_only_what_it_needs(image, tmp_path):
    root = opt_ml(tmp_path / "ml", world_writable=False)
    with serving(image, root) as (box, url):
        me = ask_identity(url)
        assert_unprivileged(me, str(me))

        pid1 = box.host_pid()
        processes = [status_of(pid) for pid in descendants(pid1)]
        nginx = [p for p in processes if p["name"] == "nginx"]
        assert nginx, f"no nginx among {processes}"
        for process in processes:  # nginx's master and workers, gunicorn's master and workers
            assert process["uid"] != 0 and process["cap_eff"] == 0, processes
        init = status_of(pid1)
        assert init["uid"] == 0
        assert init["cap_eff"] & ~INIT_KEEPS == 0, f"PID 1 keeps {init['cap_eff']:#x}"
        assert init["cap_eff"] & (1 << 5), "PID 1 lost CAP_KILL: it could not stop its workloads"


# ---- an image with USER 1000 -----------------------------------------------------

def test_an_image_with_user_1000_trains(user_image, tmp_path):
    root = opt_ml(tmp_path / "ml", world_writable=True)
    model, proc = train(user_image, root)
    detail = proc.stdout + proc.stderr
    assert model["uid"] == 1000 and model["cap_eff"] == 0 and model["no_new_privs"] == 1, detail
    assert model["home"] == "/home/trainer", detail
    assert "chown" not in proc.stderr.lower() and "Traceback" not in proc.stderr, detail


def test_an_image_with_user_1000_serves(user_image, tmp_path):
    root = opt_ml(tmp_path / "ml", world_writable=True)
    with serving(user_image, root) as (box, url):
        me = ask_identity(url)
        assert me["uid"] == 1000 and me["cap_eff"] == 0 and me["no_new_privs"] == 1, str(me)
        processes = [status_of(pid) for pid in descendants(box.host_pid())]
        assert any(p["name"] == "nginx" for p in processes), processes
        assert all(p["uid"] == 1000 for p in processes), processes
