"""Nothing the workload creates makes root PID 1 write, delete, hang or crash.

`smsuper serve` runs as PID 1 of a new PID namespace (real nginx, real gunicorn), with its
workloads as `nobody`. Each attack is carried out the way a workload could: by a process
running as nobody (setpriv), doing only what nobody may do, in the runtime directory the
servers share. What it aims at are root-only files and directories of the "container"; the
test then checks they are untouched and that PID 1 still does its job (restarts, drains,
answers scrapes).

The full-disk cases put the runtime directory on a small tmpfs mounted inside the PID
namespace's own mount namespace, filled up through /proc/PID/root once the server is up.
"""

from __future__ import annotations

import errno
import os
import shlex
import signal
import stat
import subprocess
import textwrap
from pathlib import Path
from typing import List, Optional

import pytest
import requests

from helpers import WAIT_LIMIT, Server, children_of, eventually, free_port, title_of

pytestmark = [pytest.mark.slow,  # serving stacks as nobody, mounts
              pytest.mark.skipif(not all(os.path.exists(path) for path in ("/usr/sbin/nginx", "/usr/bin/setpriv",
                                                                          "/usr/bin/python3")),
                                reason="needs nginx, setpriv and Debian's python3 (scripts/install-test-deps.sh)")]

NOBODY = 65534
# The interpreter PID 1 runs on, and so its servers: nobody must reach it (pyenv's are under root's 0700 home).
PYTHON = "/usr/bin/python3"

# Answers where the worker runs (its cwd) and as whom.
MODEL = """
import os

def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    return {"cwd": os.getcwd(), "uid": os.getuid(), "home": os.environ.get("HOME")}
"""

SECRET = "root's own secret\n"


# ---- helpers ------------------------------------------------------------------------------------

def reachable_for_everyone(path: Path) -> None:
    """pytest's tmp dirs are 0700 root: let nobody get through them (as an image's /opt/ml lets it)."""
    for directory in [path, *path.parents]:
        if str(directory) in ("/", "/tmp"):
            break
        directory.chmod(directory.stat().st_mode | 0o711)


def as_nobody(script: str) -> subprocess.CompletedProcess:
    """Run a shell script as the workload's user would run it: uid and gid nobody, no groups."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           "sh", "-c", script], capture_output=True, text=True, timeout=WAIT_LIMIT)


def root_only_file(path: Path) -> Path:
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def root_only_directory(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o755)
    (path / "keep.txt").write_text("keep me\n")
    return path


def assert_untouched_file(path: Path) -> None:
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0
    assert stat.S_IMODE(info.st_mode) == 0o600, oct(info.st_mode)
    assert path.read_text() == SECRET


def assert_untouched_directory(path: Path) -> None:
    assert sorted(os.listdir(path)) == ["keep.txt"]
    assert (path / "keep.txt").read_text() == "keep me\n"


def namespace_server(pyz: Path, env: dict, base: Path, prelude: str = "true", cwd: Optional[Path] = None) -> Server:
    """A Server on PYTHON, with shell commands run in the new namespaces before exec'ing PID 1 (a tmpfs mount)."""
    command = f"{prelude} && exec {PYTHON} {shlex.quote(str(pyz))} serve"
    return Server(pyz, env, base, cwd, command=["sh", "-c", command])


@pytest.fixture()
def nobody_serve(pyz, base_env, tmp_path):
    """serve(**env) as the default user nobody, code readable by nobody; servers killed at the end."""
    servers: List[Server] = []
    reachable_for_everyone(tmp_path)

    def start(prelude: str = "true", cwd: Optional[Path] = None, **extra: str) -> Server:
        base = tmp_path / "ml"
        code = base / "model" / "code"
        code.mkdir(parents=True, exist_ok=True)
        (code / "inference.py").write_text(textwrap.dedent(MODEL))
        for directory in (base, base / "model", code):
            directory.chmod(0o755)
        env = dict(base_env)
        for name in ("SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT_DIRECTORY", "SMSUPER_APP", "TMPDIR"):
            env.pop(name, None)
        env.update({"SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(free_port()),
                    "SAGEMAKER_MODEL_SERVER_WORKERS": "2", "SMSUPER_USER": "nobody",
                    "SMSUPER_RUNTIME_DIR": str(tmp_path / "run"), "SMSUPER_GRACE_PERIOD": "20"})
        env.update(extra)
        env = {key: value for key, value in env.items() if value is not None}
        server = namespace_server(pyz, env, base, prelude, cwd)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def gunicorn_masters(server: Server) -> List[int]:
    return [pid for pid in children_of(server.init_pid()) if "gunicorn: master" in title_of(pid)]


def kill_master_as_nobody(server: Server) -> None:
    """The workload kills its own gunicorn master; returns once PID 1 has started a new one."""
    old = gunicorn_masters(server)
    assert old, "no gunicorn master"
    done = as_nobody(f"kill -9 {old[0]}")
    assert done.returncode == 0, done.stderr

    def restarted() -> bool:
        assert server.proc.poll() is None, f"PID 1 exited {server.proc.returncode}:\n{server.stderr()}"
        return bool(gunicorn_masters(server)) and gunicorn_masters(server) != old

    eventually(restarted, "a new gunicorn master")


def workers_of(server: Server) -> List[int]:
    return [pid for master in gunicorn_masters(server) for pid in children_of(master)]


def assert_stops_cleanly(server: Server) -> None:
    assert server.proc.poll() is None, f"PID 1 exited {server.proc.returncode}:\n{server.stderr()}"
    code = server.terminate()
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr(), server.stderr()


def fill_up(server: Server, mount_point: Path) -> None:
    """Write zeros onto the tmpfs mounted in PID 1's mount namespace until it is full."""
    path = f"/proc/{server.init_pid()}/root{mount_point}/filler"
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    # Whatever a partial page left: a file of a single byte more must not fit.
    with pytest.raises(OSError):
        with open(f"/proc/{server.init_pid()}/root{mount_point}/one-more", "wb") as handle:
            handle.write(b"\0" * 4096)
            handle.flush()


# ---- the runtime directory: links and FIFOs planted by the workload -----------------------------------

def test_a_link_where_pid1_writes_the_ping_status_does_not_reach_a_root_file(nobody_serve, tmp_path):
    secret = root_only_file(tmp_path / "secret")
    server = nobody_serve()
    server.wait_ready()
    run = tmp_path / "run"
    # Every name PID 1 has used for /ping's body and its temporary file, in every directory nobody can write.
    planted = as_nobody(f"""
        for d in {run} {run}/shared $(find {run} -type d 2>/dev/null); do
            for n in ping-status.json ping-status.json.1 ping-status.json.tmp; do
                ln -sfn {secret} "$d/$n" 2>/dev/null && echo "$d/$n"
            done
        done
        true""")
    assert planted.stdout.strip(), "the workload could plant nothing: the test proves nothing"
    kill_master_as_nobody(server)  # PID 1 writes "restarting" into /ping's body
    eventually(lambda: "restarting gunicorn" in server.stderr(), "PID 1 to restart gunicorn")
    assert_untouched_file(secret)
    assert_stops_cleanly(server)
    assert_untouched_file(secret)


def test_ready_dir_swapped_for_a_link_does_not_make_pid1_empty_a_root_directory(nobody_serve, tmp_path):
    precious = root_only_directory(tmp_path / "precious")
    server = nobody_serve()
    server.wait_ready()
    swapped = as_nobody(f"""
        for d in $(ls -d {tmp_path / 'run'}/ready.d {tmp_path / 'run'}/shared/ready.d 2>/dev/null); do
            mv "$d" "$d.moved" && ln -s {precious} "$d" && echo "$d"
        done
        true""")
    assert swapped.stdout.strip(), "the workload could swap nothing: the test proves nothing"
    kill_master_as_nobody(server)  # PID 1 clears readiness: every marker of the dead master's workers
    assert_untouched_directory(precious)
    assert_stops_cleanly(server)
    assert_untouched_directory(precious)


def test_a_swapped_home_does_not_make_pid1_remove_a_root_directory(nobody_serve, tmp_path):
    precious = root_only_directory(tmp_path / "precious")
    server = nobody_serve()
    server.wait_ready()
    home = server.post([1]).json()["home"]
    assert home and os.stat(home).st_uid == NOBODY  # nobody's /nonexistent home: smsuper made it one
    # Whether or not the swap works, PID 1 removes the home it made when the job ends.
    as_nobody(f"mv {home} {home}.moved && ln -s {precious} {home}")
    server.terminate()
    assert_untouched_directory(precious)


def test_fifos_in_the_metrics_directory_block_neither_scrapes_nor_restarts(nobody_serve, tmp_path):
    metrics_port = free_port()
    server = nobody_serve(SMSUPER_METRICS_PORT=str(metrics_port))
    server.wait_ready()
    assert server.post([1]).status_code == 200
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    eventually(lambda: "smsuper_http_requests_total{" in requests.get(metrics_url, timeout=WAIT_LIMIT).text,
               "the request counted")  # published a moment after the request
    # counter_1.db: a "living" process's file (PID 1 reads it at each scrape); counter_999999.db: a dead
    # one's (the next gunicorn master folds it into the archive); .lock: what both open to lock.
    planted = as_nobody(f"""
        for d in $(ls -d {tmp_path / 'run'}/metrics {tmp_path / 'run'}/shared/metrics 2>/dev/null); do
            mkfifo "$d/counter_1.db" "$d/counter_999999.db" "$d/gauge_livesum_1.db" && echo "$d"
            rm -f "$d/.lock" && mkfifo "$d/.lock"
        done
        true""")
    assert planted.stdout.strip(), planted.stderr
    scrape = requests.get(metrics_url, timeout=WAIT_LIMIT)
    assert scrape.status_code == 200 and "smsuper_http_requests_total{" in scrape.text
    kill_master_as_nobody(server)  # restarts still happen, and the new master's compaction does not hang
    server.wait_ready()
    assert server.post([2]).status_code == 200
    assert requests.get(metrics_url, timeout=WAIT_LIMIT).status_code == 200
    assert_stops_cleanly(server)


# ---- a full disk ------------------------------------------------------------------------------------

def tmpfs_prelude(mount_point: Path, size: str = "4m") -> str:
    return f"mount -t tmpfs -o size={size},mode=0755 smsuper-test {shlex.quote(str(mount_point))}"


def test_a_full_runtime_filesystem_does_not_crash_pid1_when_gunicorn_dies(nobody_serve, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    server = nobody_serve(prelude=tmpfs_prelude(run))
    server.wait_ready()
    fill_up(server, run)
    kill_master_as_nobody(server)  # PID 1 clears readiness and writes /ping's "restarting" body
    server.wait_ready()  # the new master serves: a full disk costs /ping's explanation at most
    assert server.post([1]).status_code == 200
    assert_stops_cleanly(server)


def test_a_full_disk_costs_metrics_never_requests(nobody_serve, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics_port = free_port()
    server = nobody_serve(prelude=tmpfs_prelude(run), SMSUPER_METRICS_PORT=str(metrics_port))
    server.wait_ready()
    assert server.post([0]).status_code == 200
    fill_up(server, run)
    # New workers start on the full disk: their metrics files find no room.
    old = workers_of(server)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: len(set(workers_of(server)) - set(old)) >= 2, "two new workers")
    server.wait_ready()
    codes = [server.post([n]).status_code for n in range(40)]
    assert codes == [200] * 40, server.stderr()[-6000:]
    assert "SIGBUS" not in server.stderr() and "signal 7" not in server.stderr()
    scrape = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=WAIT_LIMIT).text
    dropped = [line for line in scrape.splitlines() if line.startswith("smsuper_metrics_dropped_processes_total")]
    assert dropped and float(dropped[0].split()[-1]) >= 1, scrape
    assert "no room for its metrics" in server.stderr()
    assert_stops_cleanly(server)


# ---- where the runtime directory goes --------------------------------------------------------------

def locked_directory(path: Path) -> Path:
    """A directory root owns with mode 0700, as test harnesses and some launchers make: nobody cannot enter."""
    path.mkdir()
    path.chmod(0o700)
    return path


def test_an_unreachable_tmpdir_and_cwd_still_serve(nobody_serve, tmp_path):
    locked = locked_directory(tmp_path / "locked")
    server = nobody_serve(cwd=locked, TMPDIR=str(locked), SMSUPER_RUNTIME_DIR=None)
    server.wait_ready()
    answer = server.post([1]).json()
    assert answer["uid"] == NOBODY
    # The workers run where the workload can be: the code directory.
    assert answer["cwd"] == str(tmp_path / "ml" / "model" / "code")
    assert "Permission denied" not in server.stderr() and "can't chdir" not in server.stderr()
    assert_stops_cleanly(server)


def test_an_unreachable_runtime_dir_fails_at_once_naming_it(pyz, base_env, tmp_path, nobody_serve):
    locked = locked_directory(tmp_path / "locked")
    server = nobody_serve(SMSUPER_RUNTIME_DIR=str(locked / "run"))
    code = server.proc.wait(timeout=WAIT_LIMIT)
    assert code == 2, server.stderr()
    assert f"SMSUPER_RUNTIME_DIR={locked / 'run'}" in server.stderr()
    assert f"{locked} is not searchable" in server.stderr()
    assert "restarting" not in server.stderr()


def test_no_reachable_place_at_all_fails_at_once_naming_each(nobody_serve, tmp_path, pyz):
    locked = locked_directory(tmp_path / "locked")
    # In PID 1's own mount namespace /tmp and /dev/shm become root's 0700 directories; the test's
    # files (under /tmp) stay visible at /mnt.
    inside = Path("/mnt") / tmp_path.relative_to("/tmp")
    prelude = ("mount --bind /tmp /mnt && mount -t tmpfs -o size=1m,mode=0700 smsuper-test /tmp"
               " && mount -t tmpfs -o size=1m,mode=0700 smsuper-test /dev/shm")
    pyz_dir = pyz.resolve().parent
    if pyz_dir.is_relative_to(Path("/tmp")):  # a checkout under /tmp: root PID 1 still finds its pyz
        hidden = Path("/mnt") / pyz_dir.relative_to("/tmp")
        prelude += f" && mkdir -p {shlex.quote(str(pyz_dir))} && mount --bind {shlex.quote(str(hidden))} {shlex.quote(str(pyz_dir))}"
    server = nobody_serve(prelude=prelude, TMPDIR=str(inside / "locked"), SMSUPER_RUNTIME_DIR=None,
                          SAGEMAKER_BASE_DIR=str(inside / "ml"))
    code = server.proc.wait(timeout=WAIT_LIMIT)
    assert code == 2, server.stderr()
    message = server.stderr()
    for tried in (f"TMPDIR={inside / 'locked'}", "/tmp", "/dev/shm", "SMSUPER_RUNTIME_DIR"):
        assert tried in message, message
    assert "restarting" not in message
    assert locked.exists()


def test_a_runtime_filesystem_full_at_start_stops_serve_with_a_reason(nobody_serve, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # One page: /ping's "starting" body takes it, nginx.conf finds no room.
    server = nobody_serve(prelude=tmpfs_prelude(run, size="4k"))
    code = server.proc.wait(timeout=WAIT_LIMIT)
    message = server.stderr()
    assert code != 0, message
    assert "Traceback" not in message, message
    assert "No space left on device" in message and "nginx.conf" in message, message


def test_a_private_home_goes_where_the_workload_can_reach_it(pyz, base_env, tmp_path):
    locked = locked_directory(tmp_path / "locked")
    env = dict(base_env, SMSUPER_USER="nobody", TMPDIR=str(locked), SMSUPER_METRICS_PORT="0")
    done = subprocess.run([PYTHON, str(pyz), "sh", "-c", 'touch "$HOME/written" && echo "$HOME"'], env=env,
                          cwd="/", capture_output=True, text=True, timeout=WAIT_LIMIT)
    assert done.returncode == 0, done.stderr
    home = done.stdout.strip()
    assert home.startswith("/tmp/smsuper-home-"), home
    assert not os.path.exists(home)  # removed at the end
