"""`smsuper serve` end to end: the built pyz as PID 1 of a new PID namespace, real nginx, real HTTP.

Each test lays out a base directory like /opt/ml with a handler module, starts
`unshare --pid --fork --mount-proc --kill-child python PYZ serve` on a free
port and talks to it over HTTP. Slow parts of a model are gated on files the
test creates, so nothing depends on timing; the time limits below are safety
nets against a hang, never assertions about speed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from helpers import WAIT_LIMIT, background, eventually, free_port, host_pid, in_flight, nginx_writing, tiny_wheel

SIX_MIB = 6 * 1024 * 1024

pytestmark = [pytest.mark.slow,  # each test starts a serving stack (nginx, gunicorn, workers)
              pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                reason="nginx is not installed (scripts/install-test-deps.sh installs it)")]

BODY_LENGTH_MODEL = """
def model_fn(model_dir):
    return None

def transform_fn(model, body, content_type, accept):
    return str(len(body)), "text/plain"
"""


# ---- routes and status codes ---------------------------------------------------------------

def test_every_route_and_status_code(serve):
    server = serve()
    server.wait_ready()
    ping = server.ping()
    assert ping.status_code == 200 and ping.content == b""

    ok = server.post([[1, 2], [3, 4]], **{"X-Amzn-SageMaker-Custom-Attributes": "trace=9"})
    assert ok.status_code == 200 and ok.json() == [[1, 2], [3, 4]]
    assert ok.headers["X-Amzn-SageMaker-Custom-Attributes"] == "echo:trace=9"

    csv = server.post("1,2\n3,4\n", "text/csv; charset=utf-8", Accept="text/csv;q=0.9, application/json;q=0.1")
    assert csv.status_code == 200 and csv.headers["Content-Type"] == "text/csv"
    assert csv.text == "1.0,2.0\n3.0,4.0\n"

    cases = {
        415: server.post(b"GIF89a", "image/gif"),
        406: server.post([1], Accept="image/png"),
        400: server.post(b"{broken", "application/json"),
        404: requests.get(server.url("/models"), timeout=10),
        405: requests.get(server.url("/invocations"), timeout=10),
    }
    for status, response in cases.items():
        assert response.status_code == status, (status, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]

    parameters = requests.get(server.url("/execution-parameters"), timeout=10)
    assert parameters.json() == {"MaxConcurrentTransforms": 2, "BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6}

    # The access log reaches stdout through PID 1, without the pings.
    eventually(lambda: "POST /invocations" in server.stdout(), "access log lines on stdout")
    assert "GET /ping" not in server.stdout()
    assert server.terminate() == 0


def test_user_error_is_500_with_short_json_and_traceback_in_log(serve):
    server = serve(code="""
        def model_fn(model_dir):
            return None
        def predict_fn(data, model):
            raise KeyError("no feature named 'age'")
    """)
    server.wait_ready()
    response = server.post({"x": 1})
    assert response.status_code == 500
    assert "predict_fn raised KeyError" in response.json()["error"]
    eventually(lambda: "Traceback" in server.stderr(), "the traceback in the log")


def test_six_mib_passes_and_one_byte_more_is_413(serve):
    server = serve(code=BODY_LENGTH_MODEL)
    server.wait_ready()
    exact = server.post(b"x" * SIX_MIB, "application/octet-stream")
    assert exact.status_code == 200 and exact.text == str(SIX_MIB)
    too_big = server.post(b"x" * (SIX_MIB + 1), "application/octet-stream")
    assert too_big.status_code == 413
    assert "6291456" in too_big.json()["error"]
    # Kept in memory, not spooled to a temporary file.
    assert "buffered to a temporary file" not in server.stderr()


def test_slow_prediction_gets_one_clear_504(serve):
    server = serve(SAGEMAKER_MODEL_SERVER_TIMEOUT="2")
    server.wait_ready()
    slow = server.post({"sleep": 4})
    assert slow.status_code == 504
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT=2" in slow.json()["error"]
    assert server.post([1]).status_code == 200  # the other worker still serves


# ---- /ping -------------------------------------------------------------------------------------

def test_ping_fails_until_the_model_is_loaded_then_passes_while_all_workers_are_busy(serve):
    server = serve(loaded=False)
    eventually(lambda: server.ping() is not None, "nginx to answer")
    loading = server.ping()
    assert loading.status_code == 503 and loading.json()["status"] in ("starting", "loading")

    (server.base / "load").touch()
    server.wait_ready()

    busy = [background(lambda: server.post({"gate": True})) for _ in range(2)]
    eventually(lambda: in_flight(server.base) == 2, "both workers to be busy")
    for _ in range(20):
        response = server.ping()
        assert response is not None and response.status_code == 200
    (server.base / "open").touch()
    assert [r().status_code for r in busy] == [200, 200]


def test_model_fn_raising_fails_ping_and_invocations_without_crash_loop(serve):
    server = serve(code="""
        def model_fn(model_dir):
            raise RuntimeError("weights file is corrupt")
    """)
    eventually(lambda: (server.ping() is not None and server.ping().status_code == 503
                        and server.ping().json()["status"] == "failed"), "/ping to report the failure")
    ping = server.ping().json()
    assert "weights file is corrupt" in ping["error"]
    response = server.post([1])
    assert response.status_code == 500
    assert "failed to load" in response.json()["error"] and "weights file is corrupt" in response.json()["error"]
    logged = server.stderr()
    assert logged.count("Traceback (most recent call last)") == 1  # two workers, logged once
    assert "restarting gunicorn" not in logged and server.proc.poll() is None


# ---- lifecycle -----------------------------------------------------------------------------------

def test_sigterm_completes_every_request_in_flight_and_exits_0(serve):
    metrics_port = free_port()
    server = serve(SMSUPER_METRICS_PORT=str(metrics_port))
    server.wait_ready()
    # Two requests hold both workers; two more wait in gunicorn's socket backlog.
    requests_ = [background(lambda: server.post({"gate": True})) for _ in range(4)]
    eventually(lambda: in_flight(server.base) == 2, "both workers to be busy")
    # In flight means nginx holds all four: one not yet accepted is not the server's to finish.
    eventually(lambda: nginx_writing(metrics_port) >= 5, "nginx to hold the four requests")
    os.kill(server.init_pid(), signal.SIGTERM)
    eventually(lambda: "SIGTERM" in server.stderr(), "smsuper to take the SIGTERM")
    (server.base / "open").touch()
    answers = [r() for r in requests_]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert server.proc.wait(timeout=WAIT_LIMIT) == 0, server.stderr()


def test_nginx_killed_with_sigkill_comes_back(serve):
    server = serve()
    server.wait_ready()
    os.kill(server.child("nginx: master"), signal.SIGKILL)
    eventually(lambda: "nginx exited" in server.stderr(), "smsuper to notice")
    server.wait_ready()
    assert server.post([5]).json() == [5]


def test_gunicorn_master_killed_with_sigkill_comes_back(serve):
    server = serve()
    server.wait_ready()
    master = server.gunicorn_master()
    os.kill(master, signal.SIGKILL)
    eventually(lambda: "gunicorn exited" in server.stderr(), "smsuper to notice")
    eventually(lambda: server.gunicorn_master() != master, "a new gunicorn master")
    server.wait_ready()
    assert server.post([6]).json() == [6]


def test_worker_killed_mid_request_fails_only_that_request(serve):
    server = serve()
    server.wait_ready()
    doomed = background(lambda: server.post({"gate": True}))
    eventually(lambda: in_flight(server.base) == 1, "the request to reach a worker")
    victim = host_pid(int(os.listdir(server.base / "inflight")[0].split("-")[0]), server.init_pid())
    assert server.post([7]).json() == [7]  # the other worker serves meanwhile
    os.kill(victim, signal.SIGKILL)
    failed = doomed()
    assert failed.status_code == 502 and failed.json()["error"]
    (server.base / "open").touch()
    for value in range(4):
        assert server.post([value]).json() == [value]


def test_missing_handler_module_fails_at_once(pyz, base_env, tmp_path):
    base = tmp_path / "ml"
    base.mkdir()
    env = dict(base_env, SAGEMAKER_BASE_DIR=str(base), SAGEMAKER_BIND_TO_PORT=str(free_port()))
    env.pop("SMSUPER_APP", None)
    proc = subprocess.run([sys.executable, str(pyz), "serve"], env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=WAIT_LIMIT)
    assert proc.returncode == 2
    assert f"no handler module inference.py in {base}/model/code, {base}/code" in proc.stderr.decode()


def test_a_server_that_keeps_dying_stops_the_job_with_a_reason(serve):
    with socket.socket() as squatter:  # gunicorn (no nginx) cannot bind a taken port
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        server = serve(SMSUPER_NGINX="/nonexistent/nginx", SAGEMAKER_BIND_TO_PORT=str(squatter.getsockname()[1]),
                       SMSUPER_RESTART_LIMIT="2")
        code = server.proc.wait(timeout=WAIT_LIMIT)
    assert code != 0
    assert "gunicorn keeps failing" in server.stderr()


# ---- variants ----------------------------------------------------------------------------------------

def test_without_nginx_gunicorn_binds_the_port_and_says_so(serve):
    server = serve(SMSUPER_NGINX="/nonexistent/nginx")
    server.wait_ready()
    assert "no nginx found" in server.stderr()
    assert server.post([8]).json() == [8]
    assert server.terminate() == 0


SEED_PREDICTOR = (Path(__file__).parent / "apps" / "seed_predictor.py").read_text()


def test_style_b_seed_predictor_app(serve, tmp_path):
    program = tmp_path / "program"
    program.mkdir()
    (program / "predictor.py").write_text(SEED_PREDICTOR)
    (tmp_path / "ml" / "model").mkdir(parents=True)
    (tmp_path / "ml" / "model" / "factor.txt").write_text("10")
    server = serve(cwd=program, SMSUPER_APP="predictor:app")
    server.wait_ready()
    response = server.post("1,2,3\n4,5\n", "text/csv")
    assert response.status_code == 200 and response.text == "30\n20"
    assert server.post([1]).status_code == 415
    assert requests.get(server.url("/execution-parameters"), timeout=10).json()["MaxConcurrentTransforms"] == 2
    assert requests.get(server.url("/other"), timeout=10).status_code == 404
    assert server.terminate() == 0


def test_requirements_are_installed_before_workers_start(serve, tmp_path):
    code_dir = tmp_path / "ml" / "model" / "code"
    code_dir.mkdir(parents=True)
    wheel = tiny_wheel(code_dir)
    target = tmp_path / "site"
    server = serve(code="""
        import smsuper_tinydep
        def model_fn(model_dir):
            return smsuper_tinydep.ANSWER
        def predict_fn(data, model):
            return model
    """, files={"requirements.txt": f"./{wheel}\n"}, PIP_TARGET=str(target), PYTHONPATH=str(target),
        PIP_NO_INDEX="1")
    server.wait_ready()
    assert server.post([0]).json() == 42


def test_preload_loads_the_model_once_before_forking(serve):
    server = serve(code="""
        import os
        def model_fn(model_dir):
            return os.getpid()
        def predict_fn(data, model):
            return {"loaded_in": model, "served_by": os.getpid()}
    """, SMSUPER_PRELOAD_MODEL="true")
    server.wait_ready()
    answers = [server.post([0]).json() for _ in range(6)]
    assert len({a["loaded_in"] for a in answers}) == 1
    assert all(a["loaded_in"] != a["served_by"] for a in answers)  # loaded in the master, served by workers
    assert server.stderr().count("model loaded") == 1


def test_threaded_workers_serve_concurrently(serve):
    server = serve(SAGEMAKER_MODEL_SERVER_WORKERS="1", SMSUPER_WORKER_THREADS="4")
    server.wait_ready()
    busy = [background(lambda: server.post({"gate": True})) for _ in range(3)]
    eventually(lambda: in_flight(server.base) == 3, "three requests in one worker at once")
    assert server.ping().status_code == 200
    (server.base / "open").touch()
    assert [r().status_code for r in busy] == [200] * 3


def test_json_log_format_covers_the_access_log(serve):
    server = serve(SMSUPER_LOG_FORMAT="json")
    server.wait_ready()
    assert server.post([1]).status_code == 200
    eventually(lambda: "/invocations" in server.stdout(), "the access log line")
    line = next(json.loads(text) for text in server.stdout().splitlines() if "/invocations" in text)
    assert line["source"] == "nginx" and "POST /invocations" in line["message"]
    sources = {json.loads(text)["source"] for text in server.stderr().splitlines() if text.startswith("{")}
    assert {"smsuper", "gunicorn"} <= sources
    assert not [text for text in server.stderr().splitlines() if text.startswith("[")]  # no plain gunicorn lines
