"""Code from S3: `sagemaker_submit_directory = s3://BUCKET/.../sourcedir.tar.gz`.

The SageMaker SDK's framework estimators (and `Estimator(source_dir=...,
entry_point=...)`) upload the user's code and name it in that hyperparameter;
framework models deployed with `source_dir` name it in SAGEMAKER_SUBMIT_DIRECTORY.
smsuper downloads it with the image's own boto3 when the code directory is
empty. These tests run the built pyz as PID 1 of a new PID namespace against a
real S3-protocol server on loopback (moto in server mode), with boto3's own
configuration variables (S3_ENDPOINT_URL, AWS_REGION, credentials).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

import boto3  # the test extra (pyproject.toml) installs both
import moto.server as moto_server
from helpers import children_of, free_port, in_namespace, read_until, train_command

pytestmark = [pytest.mark.slow]  # an S3 server (moto) and serving stacks

# Safety nets against a hang, never assertions about speed.
RUN_LIMIT = 600
WAIT_LIMIT = 120
REGION = "us-east-1"
KEY = "job-1/source/sourcedir.tar.gz"


class S3:
    """A bucket-making client of the loopback S3 server, and the variables that reach it."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                                   aws_access_key_id="testing", aws_secret_access_key="testing")

    def bucket(self, name: str) -> str:
        self.client.create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, archive: Path) -> str:
        self.client.upload_file(str(archive), bucket, key)
        return f"s3://{bucket}/{key}"

    def environ(self) -> Dict[str, str]:
        return {"S3_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3(f"http://{host}:{port}")
    server.stop()


def bucket_name(request) -> str:
    """A bucket of the test's own (S3 names: lower case, digits, hyphens, at most 63)."""
    return re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:63].strip("-")


def sourcedir(path: Path, files: Dict[str, str], big: Optional[Path] = None) -> Path:
    """A sourcedir.tar.gz as the SDK makes it: the files at the archive's top level."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, text in files.items():
            data = textwrap.dedent(text).encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if big is not None:
            tar.add(big, arcname=big.name)
    return path


ENTRY = """
    import os, sys
    import helper
    helper.report(sys.argv[1:])
"""

HELPER = """
    import json, os
    def report(args):
        with open(os.path.join(os.environ["SM_MODEL_DIR"], "ran.json"), "w") as handle:
            json.dump({"args": args, "cwd": os.getcwd(), "module_dir": os.environ["SM_MODULE_DIR"],
                       "uid": os.getuid()}, handle)
        print("helper ran from", os.path.dirname(os.path.abspath(__file__)), flush=True)
"""


def layout(base: Path, hyperparameters: dict, code: Optional[Dict[str, str]] = None) -> Path:
    """An /opt/ml tree with an empty (or given) code directory."""
    (base / "code").mkdir(parents=True)
    for name, text in (code or {}).items():
        (base / "code" / name).write_text(textwrap.dedent(text))
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text("{}")
    return base


def framework_hyperparameters(uri: str, **user: str) -> dict:
    """What the SDK's framework estimators pass: JSON-encoded values."""
    hps = {"sagemaker_program": json.dumps("entry.py"), "sagemaker_submit_directory": json.dumps(uri),
           "sagemaker_region": json.dumps(REGION)}
    hps.update({name: json.dumps(value) for name, value in user.items()})
    return hps


def environment(base_env: dict, base: Path, extra: Dict[str, str]) -> dict:
    env = dict(base_env)
    for name in list(env):
        if name.startswith("AWS_") or name in ("S3_ENDPOINT_URL", "SAGEMAKER_REGION", "SAGEMAKER_PROGRAM",
                                               "SAGEMAKER_SUBMIT_DIRECTORY", "SAGEMAKER_TRAINING_MODULE") \
                or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            env.pop(name)
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # nothing here may leave the machine
    env["SAGEMAKER_BASE_DIR"] = str(base)
    env.update(extra)
    return env


def run_train(pyz: Path, base_env: dict, base: Path, python: str = sys.executable,
              **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(pyz, python), env=environment(base_env, base, extra),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_LIMIT)


def failure_of(base: Path) -> str:
    return (base / "output" / "failure").read_text(encoding="utf-8")


def detail(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout.decode(errors='replace')}\n" \
           f"stderr:\n{proc.stderr.decode(errors='replace')}"


# ---- training ----------------------------------------------------------------------------

def test_code_from_s3_is_downloaded_into_the_empty_code_dir_and_runs(pyz, base_env, tmp_path, s3, request):
    uri = s3.put(s3.bucket(bucket_name(request)), KEY,
                 sourcedir(tmp_path / "sourcedir.tar.gz", {"entry.py": ENTRY, "helper.py": HELPER}))
    base = layout(tmp_path / "ml", framework_hyperparameters(uri, epochs="3"))
    proc = run_train(pyz, base_env, base, **s3.environ())
    assert proc.returncode == 0, detail(proc)
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert sorted(os.listdir(base / "code")) == ["entry.py", "helper.py"]  # extracted where scripts expect it
    ran = json.loads((base / "model" / "ran.json").read_text())
    assert ran["args"] == ["--epochs", "3"]
    assert ran["module_dir"] == str(base / "code")
    assert f"helper ran from {base / 'code'}".encode() in proc.stdout
    assert uri.encode() in proc.stderr  # the log says where the code came from


def test_credentials_and_region_come_from_boto3s_own_chain(pyz, base_env, tmp_path, s3, request):
    """No keys in the environment: a shared credentials file, as boto3 reads it; the region from
    SAGEMAKER_REGION when AWS_REGION is absent, as the toolkit does."""
    uri = s3.put(s3.bucket(bucket_name(request)), KEY,
                 sourcedir(tmp_path / "sourcedir.tar.gz", {"entry.py": ENTRY, "helper.py": HELPER}))
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = fromfile\naws_secret_access_key = fromfile\n")
    hps = framework_hyperparameters(uri)
    del hps["sagemaker_region"]
    base = layout(tmp_path / "ml", hps)
    proc = run_train(pyz, base_env, base, S3_ENDPOINT_URL=s3.endpoint, SAGEMAKER_REGION="eu-west-3",
                     AWS_SHARED_CREDENTIALS_FILE=str(credentials), AWS_CONFIG_FILE=str(tmp_path / "no-config"))
    assert proc.returncode == 0, detail(proc)
    assert b"eu-west-3" in proc.stderr, detail(proc)


SITECUSTOMIZE = """
import os, sys
with open("/proc/self/cmdline", "rb") as handle:
    if b"_s3-download" in handle.read():
        sys.stderr.write("download child runs as uid %d\\n" % os.getuid())
        sys.stdout.write("stray output the archive must not get\\n")
        sys.stdout.flush()
"""


@pytest.fixture()
def world_readable(tmp_path):
    """A directory the unprivileged workload can reach (pytest's own are root's, 0700)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="smsuper-s3-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_download_runs_as_the_workloads_user_with_the_default_settings(pyz, base_env, world_readable, s3,
                                                                             request):
    """SMSUPER_USER left at its default: the download child is `nobody`, not root, and still gets
    the code into the root-owned code directory; a stray print to stdout in the child's start-up
    does not end up in the archive."""
    python = "/usr/bin/python3"  # the Pythons under /root are out of nobody's reach
    if not os.access(python, os.X_OK):
        pytest.fail(f"{python} is needed: a Python the unprivileged user can run")
    site = world_readable / "site"
    source = Path(boto3.__file__).parent.parent
    site.mkdir()
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py"):
        if (source / name).is_dir():
            shutil.copytree(source / name, site / name)
        else:
            shutil.copy2(source / name, site / name)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    probe = subprocess.run([python, "-c", "import boto3"], env={"PYTHONPATH": str(site)})
    assert probe.returncode == 0, "the copied boto3 does not import in " + python
    shutil.copy2(pyz, world_readable / "smsuper.pyz")
    uri = s3.put(s3.bucket(bucket_name(request)), KEY,
                 sourcedir(world_readable / "sourcedir.tar.gz", {"entry.py": ENTRY, "helper.py": HELPER}))
    base = layout(world_readable / "ml", framework_hyperparameters(uri))
    env = dict(base_env)
    env.pop("SMSUPER_USER")
    env["SMSUPER_CACHE_DIR"] = str(world_readable / "cache")
    proc = run_train(world_readable / "smsuper.pyz", env, base, python=python, PYTHONPATH=str(site), **s3.environ())
    assert proc.returncode == 0, detail(proc)
    assert b"download child runs as uid 65534" in proc.stderr, detail(proc)
    assert (base / "code" / "entry.py").stat().st_uid == 0  # unpacked by PID 1, not writable by the script
    # The script ran as nobody too (what it wrote is given back to the directory's owner after the job).
    assert json.loads((base / "model" / "ran.json").read_text())["uid"] == 65534


def test_a_code_dir_with_files_is_used_and_nothing_is_downloaded(pyz, base_env, tmp_path, s3):
    # As the toolkit does: code baked into the image wins over the hyperparameter. The URI names
    # a bucket that does not exist, so a download would fail the job.
    base = layout(tmp_path / "ml", framework_hyperparameters("s3://no-such-bucket-anywhere/sourcedir.tar.gz"),
                  code={"entry.py": ENTRY, "helper.py": HELPER})
    proc = run_train(pyz, base_env, base, **s3.environ())
    assert proc.returncode == 0, detail(proc)
    assert b"not downloaded" in proc.stderr and b"no-such-bucket-anywhere" in proc.stderr


def test_other_schemes_are_not_downloaded_and_say_so(pyz, base_env, tmp_path):
    uri = "https://example.com/sourcedir.tar.gz"
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base)
    assert proc.returncode == 127, detail(proc)
    head = failure_of(base)[:1024]
    assert uri in head and "only s3:// locations are downloaded" in head, head


def test_a_wrong_key_fails_at_once_naming_the_uri(pyz, base_env, tmp_path, s3, request):
    bucket = s3.bucket(bucket_name(request))
    s3.put(bucket, KEY, sourcedir(tmp_path / "sourcedir.tar.gz", {"entry.py": ENTRY, "helper.py": HELPER}))
    uri = f"s3://{bucket}/job-1/sourse/sourcedir.tar.gz"
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base, **s3.environ())
    assert proc.returncode == 2, detail(proc)
    failure = failure_of(base)
    head = failure[:1024]
    assert head.startswith("CodeDownloadError: cannot download the code " + uri), failure
    assert "sagemaker_submit_directory" in head
    assert f"the bucket {bucket} has no object job-1/sourse/sourcedir.tar.gz" in head, failure
    assert "before starting the training program" in head
    assert os.listdir(base / "code") == []
    assert uri.encode() in proc.stderr


def test_a_missing_bucket_fails_at_once_naming_it(pyz, base_env, tmp_path, s3):
    uri = "s3://smsuper-no-such-bucket/job-1/source/sourcedir.tar.gz"
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base, **s3.environ())
    assert proc.returncode == 2, detail(proc)
    head = failure_of(base)[:1024]
    assert head.startswith("CodeDownloadError: cannot download the code " + uri), head
    assert "the bucket smsuper-no-such-bucket does not exist" in head, head


def test_no_credentials_anywhere_fails_saying_so(pyz, base_env, tmp_path, s3, request):
    uri = s3.put(s3.bucket(bucket_name(request)), KEY,
                 sourcedir(tmp_path / "sourcedir.tar.gz", {"entry.py": ENTRY, "helper.py": HELPER}))
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base, S3_ENDPOINT_URL=s3.endpoint, AWS_REGION=REGION,
                     AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    assert proc.returncode == 2, detail(proc)
    head = failure_of(base)[:1024]
    assert head.startswith("CodeDownloadError: cannot download the code " + uri), head
    assert "no AWS credentials" in head, head


class DenyingS3:
    """An S3 endpoint that refuses every request with 403 AccessDenied, as S3 does for a role
    without s3:GetObject (and, without s3:ListBucket, for a key that does not exist)."""

    def __init__(self):
        import http.server
        import threading

        class Deny(http.server.BaseHTTPRequestHandler):
            def _deny(self):
                body = b"" if self.command == "HEAD" else (
                    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                    b"<Message>Access Denied</Message></Error>")
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET = _deny

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = "http://127.0.0.1:%d" % self.server.server_address[1]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_access_denied_fails_naming_the_credentials_in_use(pyz, base_env, tmp_path):
    denying = DenyingS3()
    try:
        uri = "s3://private-bucket/job-1/source/sourcedir.tar.gz"
        base = layout(tmp_path / "ml", framework_hyperparameters(uri))
        proc = run_train(pyz, base_env, base, S3_ENDPOINT_URL=denying.endpoint, AWS_REGION=REGION,
                         AWS_ACCESS_KEY_ID="AKIAEXAMPLE1234", AWS_SECRET_ACCESS_KEY="testing")
    finally:
        denying.close()
    assert proc.returncode == 2, detail(proc)
    head = failure_of(base)[:1024]
    assert head.startswith("CodeDownloadError: cannot download the code " + uri), head
    assert "S3 denied access" in head and "access key ending 1234, from env" in head, head


def test_an_unreachable_s3_fails_with_exit_code_1(pyz, base_env, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        endpoint = "http://127.0.0.1:%d" % probe.getsockname()[1]
    uri = "s3://some-bucket/sourcedir.tar.gz"
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base, S3_ENDPOINT_URL=endpoint, AWS_REGION=REGION,
                     AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    assert proc.returncode == 1, detail(proc)
    head = failure_of(base)[:1024]
    assert head.startswith("CodeDownloadError: cannot download the code " + uri), head
    assert "cannot reach S3" in head and endpoint in head, head


def test_a_large_archive_arrives_whole(pyz, base_env, tmp_path, s3, request):
    big = tmp_path / "weights.bin"
    digest = hashlib.sha256()
    with open(big, "wb") as handle:
        for _ in range(64):  # 64 MiB that gzip cannot shrink: several ranged GETs in parallel
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            handle.write(chunk)
    check = """
        import hashlib, sys
        digest = hashlib.sha256()
        with open("weights.bin", "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        assert digest.hexdigest() == sys.argv[sys.argv.index("--sha256") + 1], "weights.bin differs"
        print("weights intact", flush=True)
    """
    uri = s3.put(s3.bucket(bucket_name(request)), KEY, sourcedir(tmp_path / "sourcedir.tar.gz", {"entry.py": check},
                                                                 big=big))
    base = layout(tmp_path / "ml", framework_hyperparameters(uri, sha256=digest.hexdigest()))
    proc = run_train(pyz, base_env, base, **s3.environ())
    assert proc.returncode == 0, detail(proc)
    assert b"weights intact" in proc.stdout
    assert (base / "code" / "weights.bin").stat().st_size == 64 << 20


@pytest.fixture(scope="module")
def python_without_boto3(tmp_path_factory) -> str:
    """A Python that runs the pyz but has no boto3: a venv without the machine's site-packages."""
    venv = tmp_path_factory.mktemp("no-boto3") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=RUN_LIMIT)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import boto3"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert probe.returncode != 0, "the venv sees a boto3"
    return python


def test_without_boto3_the_job_fails_at_once_with_the_two_fixes(pyz, base_env, tmp_path, s3, request,
                                                                python_without_boto3):
    uri = s3.put(s3.bucket(bucket_name(request)), KEY,
                 sourcedir(tmp_path / "sourcedir.tar.gz", {"entry.py": ENTRY, "helper.py": HELPER}))
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base, python=python_without_boto3, **s3.environ())
    assert proc.returncode == 2, detail(proc)
    head = failure_of(base)[:1024]
    assert head.startswith("CodeDownloadError: cannot download the code " + uri), head
    assert f"Python ({python_without_boto3}) has no boto3" in head, head
    assert "install boto3 in the image" in head, head
    assert f"bake the code into {base / 'code'}" in head, head
    assert b"install boto3 in the image" in proc.stderr


def test_an_archive_member_escaping_the_code_dir_is_refused(pyz, base_env, tmp_path, s3, request):
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"print('escaped')\n"
        info = tarfile.TarInfo("../../escaped.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        entry = textwrap.dedent(ENTRY).encode()
        info = tarfile.TarInfo("entry.py")
        info.size = len(entry)
        tar.addfile(info, io.BytesIO(entry))
    uri = s3.put(s3.bucket(bucket_name(request)), KEY, archive)
    base = layout(tmp_path / "ml", framework_hyperparameters(uri))
    proc = run_train(pyz, base_env, base, **s3.environ())
    assert proc.returncode != 0, detail(proc)
    head = failure_of(base)[:1024]
    assert "refusing archive member '../../escaped.py'" in head and uri in head, head
    assert not (tmp_path / "escaped.py").exists() and not (base / "escaped.py").exists()


def test_a_stop_during_a_download_that_hangs_ends_the_job_at_once(pyz, base_env, tmp_path):
    # An endpoint that accepts connections and never answers: boto3 would wait a minute per try.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = "http://127.0.0.1:%d" % silent.getsockname()[1]
        uri = "s3://silent-bucket/sourcedir.tar.gz"
        base = layout(tmp_path / "ml", framework_hyperparameters(uri))
        env = environment(base_env, base, {"S3_ENDPOINT_URL": endpoint, "AWS_REGION": REGION,
                                           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        proc = subprocess.Popen(train_command(pyz), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            read_until(proc.stderr, b"downloading " + uri.encode(), WAIT_LIMIT)
            os.kill(children_of(proc.pid)[0], signal.SIGTERM)
            proc.communicate(timeout=WAIT_LIMIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 143
    assert failure_of(base).startswith("Stopped: received SIGTERM before the training program started")


# ---- serving -----------------------------------------------------------------------------

INFERENCE = """
    import json

    def model_fn(model_dir):
        return {"from": "s3"}

    def predict_fn(data, model):
        return {"model": model, "echo": data}
"""


def serve_env(base_env: dict, base: Path, tmp_path: Path, extra: Dict[str, str]) -> dict:
    env = environment(base_env, base, extra)
    env.pop("SMSUPER_APP", None)
    env.update({"SAGEMAKER_BIND_TO_PORT": str(free_port()), "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
                "SMSUPER_RUNTIME_DIR": str(tmp_path / "run")})
    return env


def serve_command(pyz: Path):
    return in_namespace(sys.executable, str(pyz), "serve")


needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                 reason="nginx is not installed (scripts/install-test-deps.sh installs it)")


@needs_nginx
def test_serve_downloads_a_framework_models_code_named_by_sagemaker_submit_directory(pyz, base_env, tmp_path, s3,
                                                                                     request):
    import requests

    uri = s3.put(s3.bucket(bucket_name(request)), "model-1/sourcedir.tar.gz",
                 sourcedir(tmp_path / "sourcedir.tar.gz", {"serve_entry.py": INFERENCE}))
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    env = serve_env(base_env, base, tmp_path, dict(s3.environ(), SAGEMAKER_PROGRAM="serve_entry.py",
                                                   SAGEMAKER_SUBMIT_DIRECTORY=uri))
    port = env["SAGEMAKER_BIND_TO_PORT"]
    with open(tmp_path / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(serve_command(pyz), env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + WAIT_LIMIT
        answer = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text(errors="replace")
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/ping", timeout=5)
            except requests.RequestException:
                answer = None
            if answer is not None and answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer is not None and answer.status_code == 200, (tmp_path / "stderr.txt").read_text(errors="replace")
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", json={"x": 1}, timeout=WAIT_LIMIT)
        assert reply.status_code == 200 and reply.json() == {"model": {"from": "s3"}, "echo": {"x": 1}}
        assert (base / "code" / "serve_entry.py").is_file()
    finally:
        proc.kill()
        proc.wait(timeout=WAIT_LIMIT)


@needs_nginx
def test_serve_with_a_wrong_key_exits_at_once_naming_the_uri(pyz, base_env, tmp_path, s3, request):
    bucket = s3.bucket(bucket_name(request))
    uri = f"s3://{bucket}/model-1/nothing-here.tar.gz"
    base = tmp_path / "ml"
    (base / "model").mkdir(parents=True)
    env = serve_env(base_env, base, tmp_path, dict(s3.environ(), SAGEMAKER_SUBMIT_DIRECTORY=uri))
    proc = subprocess.run(serve_command(pyz), env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RUN_LIMIT)
    assert proc.returncode == 2, detail(proc)
    assert f"cannot download the code {uri} (SAGEMAKER_SUBMIT_DIRECTORY)".encode() in proc.stderr, detail(proc)
    assert f"the bucket {bucket} has no object model-1/nothing-here.tar.gz".encode() in proc.stderr, detail(proc)


@needs_nginx
def test_serve_stops_at_once_on_sigterm_during_a_download_that_hangs(pyz, base_env, tmp_path):
    # serve has no stop guard of its own before its supervisor starts: the download installs one.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = "http://127.0.0.1:%d" % silent.getsockname()[1]
        uri = "s3://silent-bucket/model-1/sourcedir.tar.gz"
        base = tmp_path / "ml"
        (base / "model").mkdir(parents=True)
        env = serve_env(base_env, base, tmp_path, {"S3_ENDPOINT_URL": endpoint, "AWS_REGION": REGION,
                                                   "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                                                   "SAGEMAKER_SUBMIT_DIRECTORY": uri})
        proc = subprocess.Popen(serve_command(pyz), env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            read_until(proc.stderr, b"downloading " + uri.encode(), WAIT_LIMIT)
            os.kill(children_of(proc.pid)[0], signal.SIGTERM)
            _, err = proc.communicate(timeout=WAIT_LIMIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 143, err.decode(errors="replace")
    assert b"received SIGTERM while downloading " + uri.encode() in err
