"""Inputs the workload's user cannot read, and the places handed back after a job.

The SageMaker SDK's local mode hands over /opt/ml/input/data as a 0700 root
directory and extracts the model for serving into a 0700 directory; a
workload run as `nobody` could read neither. These tests run the built pyz as
PID 1 of a new PID namespace (`unshare`) with smsuper's default user, the way
the platform starts it, and check what the user would: the script reads its
channel, model_fn loads, an explicit SMSUPER_USER that cannot read fails at
once naming the path; after a job the model and output directories belong to
their owner again, and nothing the workload planted (a link) makes root PID 1
chown or overwrite a file outside.

The pyz runs with Debian's /usr/bin/python3 when present: the training script
runs with smsuper's own interpreter, and the pyenv Pythons live under root's
0700 home, out of `nobody`'s reach.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import requests

from helpers import free_port, in_namespace, stop, train_command, wait_for_ping

pytestmark = [pytest.mark.slow]  # serving stacks and training jobs as nobody

RUN_LIMIT = 300  # safety nets against a hang, never assertions about speed
WAIT_LIMIT = 120
HOST_USER = 1000  # the person on the host who owns the mounted directory
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable

IDENTITY = """
    def identity():
        fields = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return {"uid": int(fields["Uid"][1]), "cap_eff": int(fields["CapEff"][0], 16),
                "no_new_privs": int(fields["NoNewPrivs"][0])}
"""

# Reads its channel the way real scripts do, and says who it ran as.
READ_CHANNEL = IDENTITY + """
    import json, os
    channel = os.environ["SM_CHANNEL_TRAIN"]
    rows = [line for name in sorted(os.listdir(channel)) for line in open(os.path.join(channel, name))]
    if not rows:
        raise ValueError("no CSV files in the train channel")
    me = identity()
    me["rows"] = len(rows)
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "model.json"), "w") as handle:
        json.dump(me, handle)
"""


def traversable(path: Path) -> None:
    """pytest's tmp dirs are 0700 root: let every user through the parents (not into the inputs)."""
    for parent in [path, *path.parents]:
        if parent == Path(tempfile.gettempdir()) or parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o711)


def layout(base: Path, script: str, channel_mode: int = 0o755) -> Path:
    """An /opt/ml like the SDK's: config, a train channel, code; data at `channel_mode`."""
    for directory in ("code", "input/config", "input/data/train"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    (base / "code" / "train.py").write_text(textwrap.dedent(script))
    (base / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {"train": {"TrainingInputMode": "File", "ContentType": "text/csv"}}))
    (base / "input" / "config" / "hyperparameters.json").write_text("{}")
    (base / "input" / "data" / "train" / "data.csv").write_text("1,2\n3,4\n")
    for path in base.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    traversable(base)
    (base / "input" / "data").chmod(channel_mode)  # the SDK's mkdtemp copy
    return base


def environment(base_env: dict, base: Path, **extra: str) -> dict:
    env = dict(base_env)
    for name in ("SMSUPER_USER", "SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_TRAINING_MODULE",
                 "SMSUPER_RUNTIME_DIR"):
        env.pop(name, None)
    env.update(SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_PROGRAM="train.py")
    env.update(extra)
    return env


def run_train(pyz: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(pyz, PYTHON), env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=RUN_LIMIT)


def detail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout.decode(errors='replace')}\n" \
           f"stderr:\n{proc.stderr.decode(errors='replace')}"


@pytest.fixture()
def secret(tmp_path) -> Path:
    """A root-only file outside the job's directories, like /etc/shadow."""
    path = tmp_path / "secret"
    path.write_text("TOPSECRET\n")
    path.chmod(0o600)
    return path


# ---- inputs out of the default user's reach ---------------------------------------

def test_default_user_reads_a_0700_root_channel(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", READ_CHANNEL, channel_mode=0o700)
    proc = run_train(pyz, environment(base_env, base))
    assert proc.returncode == 0, detail(proc)
    me = json.loads((base / "model" / "model.json").read_text())
    assert me["rows"] == 2
    # It kept uid 0 but none of root's powers.
    assert me == {"uid": 0, "cap_eff": 0, "no_new_privs": 1, "rows": 2}
    stderr = proc.stderr.decode()
    assert f"{base / 'input' / 'data'}" in stderr and "uid 0" in stderr, stderr
    # The user's data was not touched.
    assert (base / "input" / "data").stat().st_mode & 0o777 == 0o700


def test_default_user_becomes_the_owner_of_a_host_users_0700_channel(pyz, base_env, tmp_path):
    # A host user's bind mount: 0700 of uid 1000, which neither nobody nor a capability-less root can read.
    base = layout(tmp_path / "ml", READ_CHANNEL, channel_mode=0o700)
    for path in [base / "input" / "data", *(base / "input" / "data").rglob("*")]:
        os.lchown(path, HOST_USER, HOST_USER)
    proc = run_train(pyz, environment(base_env, base))
    assert proc.returncode == 0, detail(proc)
    me = json.loads((base / "model" / "model.json").read_text())
    assert me == {"uid": HOST_USER, "cap_eff": 0, "no_new_privs": 1, "rows": 2}
    assert f"uid {HOST_USER}" in proc.stderr.decode()


def test_default_user_stays_nobody_when_it_can_read(pyz, base_env, tmp_path):
    base = layout(tmp_path / "ml", READ_CHANNEL)
    proc = run_train(pyz, environment(base_env, base))
    assert proc.returncode == 0, detail(proc)
    assert json.loads((base / "model" / "model.json").read_text())["uid"] == 65534
    assert b"uid 0" not in proc.stderr


def test_explicit_user_that_cannot_read_fails_at_once(pyz, base_env, tmp_path):
    marker = tmp_path / "ran"
    script = f"open({str(marker)!r}, 'w').close()\n" + READ_CHANNEL
    base = layout(tmp_path / "ml", script, channel_mode=0o700)
    proc = run_train(pyz, environment(base_env, base, SMSUPER_USER="nobody"))
    assert proc.returncode == 2, detail(proc)
    assert not marker.exists(), "the script ran on an input it cannot read"
    reason = (base / "output" / "failure").read_text()
    assert str(base / "input" / "data") in reason and "SMSUPER_USER=nobody" in reason, reason
    assert "unset SMSUPER_USER" in reason, reason


# ---- serving: the model directory -------------------------------------------------

INFERENCE = IDENTITY + """
    import os

    def model_fn(model_dir):
        return open(os.path.join(model_dir, "weights.txt")).read().strip()

    def predict_fn(data, model):
        return {"model": model, "uid": identity()["uid"]}
"""


def serving_layout(base: Path) -> Path:
    (base / "code").mkdir(parents=True)
    (base / "code" / "inference.py").write_text(textwrap.dedent(INFERENCE))
    (base / "model").mkdir()
    (base / "model" / "weights.txt").write_text("forty-two\n")
    for path in base.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    traversable(base)
    (base / "model").chmod(0o700)  # what the SDK extracts the model into
    return base


def start_serve(pyz: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(in_namespace(PYTHON, str(pyz), "serve"), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                 reason="nginx is not installed (scripts/install-test-deps.sh installs it)")


@needs_nginx
def test_serve_default_user_loads_a_model_in_a_0700_directory(pyz, base_env, tmp_path):
    base = serving_layout(tmp_path / "ml")
    port = free_port()
    env = environment(base_env, base, SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_MODEL_SERVER_WORKERS="1")
    env.pop("SAGEMAKER_PROGRAM")
    proc = start_serve(pyz, env)
    try:
        status = wait_for_ping(port, proc)
        if status != 200:
            pytest.fail(f"/ping never answered 200 ({status}): {stop(proc).decode(errors='replace')}")
        answer = requests.post(f"http://127.0.0.1:{port}/invocations", data=b"{}",
                               headers={"Content-Type": "application/json"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"model": "forty-two", "uid": 0}
    finally:
        stderr = stop(proc).decode(errors="replace")
    assert str(base / "model") in stderr and "uid 0" in stderr, stderr


@needs_nginx
def test_serve_explicit_user_that_cannot_read_the_model_fails_at_once(pyz, base_env, tmp_path):
    base = serving_layout(tmp_path / "ml")
    port = free_port()
    env = environment(base_env, base, SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_MODEL_SERVER_WORKERS="1",
                      SMSUPER_USER="nobody")
    env.pop("SAGEMAKER_PROGRAM")
    proc = start_serve(pyz, env)
    status = wait_for_ping(port, proc)
    stderr = stop(proc).decode(errors="replace")
    assert status is None, f"serve started (/ping {status}) with a model its user cannot read:\n{stderr}"
    assert proc.returncode == 2, stderr
    assert str(base / "model") in stderr and "SMSUPER_USER=nobody" in stderr, stderr


# ---- handed back after the job -----------------------------------------------------

PLANTS_LINKS = """
    import os
    model = os.environ["SM_MODEL_DIR"]
    os.makedirs(os.path.join(model, "sub", "deeper"))
    for name in ("model.bin", "sub/part.bin", "sub/deeper/leaf.bin"):
        with open(os.path.join(model, name), "w") as handle:
            handle.write("weights")
    os.symlink({secret!r}, os.path.join(model, "link"))
    os.symlink({secret!r}, os.path.join(model, "sub", "deeper", "link"))
    os.symlink({outside!r}, os.path.join(model, "sub", "dirlink"))
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "report.txt"), "w") as handle:
        handle.write("done")
    with open(os.path.join(os.environ["SM_CHECKPOINT_DIR"], "step-1"), "w") as handle:
        handle.write("ckpt")
"""


def host_owned(base: Path) -> Path:
    """`docker run -v test_dir:/opt/ml`: the mounted directory and what it holds belong to the host's user."""
    for path in [base, *base.rglob("*")]:
        os.lchown(path, HOST_USER, HOST_USER)
    return base


def owners(top: Path) -> dict:
    return {str(path.relative_to(top)): os.lstat(path).st_uid for path in [top, *top.rglob("*")]}


def test_model_output_and_checkpoints_belong_to_their_owner_again(pyz, base_env, tmp_path, secret):
    outside = tmp_path / "root-dir"
    outside.mkdir()
    (outside / "kept").write_text("root's")
    base = layout(tmp_path / "ml", PLANTS_LINKS.format(secret=str(secret), outside=str(outside)))
    (base / "model").mkdir()
    (base / "output").mkdir()
    host_owned(base)
    proc = run_train(pyz, environment(base_env, base))
    assert proc.returncode == 0, detail(proc)
    for directory in ("model", "output", "checkpoints"):
        found = owners(base / directory)
        assert set(found.values()) == {HOST_USER}, (directory, found)
    assert (base / "output" / "success").exists()
    assert (base / "model" / "link").is_symlink()  # the link itself was handed back...
    assert os.stat(secret).st_uid == 0 and secret.stat().st_mode & 0o777 == 0o600  # ...never its target
    assert os.stat(outside).st_uid == 0 and os.stat(outside / "kept").st_uid == 0


def test_planted_link_at_output_failure_is_not_followed(pyz, base_env, tmp_path, secret):
    script = f"""
        import os, sys
        os.symlink({str(secret)!r}, "/".join([os.environ["SM_OUTPUT_DIR"], "failure"]))
        sys.exit(3)
    """
    base = layout(tmp_path / "ml", script)
    proc = run_train(pyz, environment(base_env, base))
    assert proc.returncode == 3, detail(proc)
    failure = base / "output" / "failure"
    assert not failure.is_symlink() and failure.is_file()
    text = failure.read_text()
    assert "TOPSECRET" not in text and "exited with code 3" in text, text
    assert secret.read_text() == "TOPSECRET\n" and secret.stat().st_mode & 0o777 == 0o600
    assert os.stat(secret).st_uid == 0
