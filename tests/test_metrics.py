"""Metrics and logs as an operator sees them: the built pyz as PID 1, scraped over loopback.

A real Prometheus server (Debian's `prometheus`) scrapes a serving smsuper and
its HTTP API is asked what it saw; `promtool check metrics` lints a scrape of
every job; the endpoint is scraped while every worker is busy, after workers
were recycled and after one timed out; training regexes turn log lines into
values; JSON log lines parse; secrets stay out of the log. Slow parts are
gated on files the test creates: the time limits are safety nets against a
hang, never assertions about speed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from helpers import (PROMTOOL, WAIT_LIMIT, Prometheus, background, eventually, free_port, in_flight, metrics_env,
                     parse, published, scrape, serving_with_metrics, train_command, train_environment, train_layout, value)


class WaitingCommand:
    """smsuper running a command that waits until `gate` exists (the pass-through job)."""

    def __init__(self, pyz: Path, env: Dict[str, str], gate: Path):
        self.gate = gate
        self.proc = subprocess.Popen([sys.executable, str(pyz), "sh", "-c",
                                      f"while [ ! -f {gate} ]; do sleep 0.02; done"],
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.stderr = ""

    def __enter__(self) -> subprocess.Popen:
        return self.proc

    def __exit__(self, *exc_info) -> None:
        self.gate.touch()
        _, err = self.proc.communicate(timeout=WAIT_LIMIT)
        self.stderr = err.decode()


def scrape_when_up(port: int, proc: subprocess.Popen) -> str:
    box: List[str] = []

    def answered() -> bool:
        assert proc.poll() is None, f"smsuper exited {proc.returncode}"
        try:
            box[:] = [scrape(port)]
        except requests.RequestException:
            return False
        return True

    eventually(answered, "the metrics endpoint to answer")
    return box[0]


def promtool_complaints(text: str) -> str:
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=60)
    return "" if checked.returncode == 0 and not checked.stdout.strip() else checked.stdout + checked.stderr


@pytest.mark.slow
def test_prometheus_sees_the_target_up_and_every_request_counted(serve, tmp_path):
    server, port = serving_with_metrics(serve)
    prometheus = Prometheus(tmp_path / "prometheus", {"smsuper": [port]})
    try:
        eventually(lambda: (prometheus.target() or {}).get("health") == "up", "Prometheus to scrape smsuper")
        target = prometheus.target()
        assert target["lastError"] == ""
        assert prometheus.query('up{job="smsuper"}') == 1

        counted = 'smsuper_http_requests_total{route="/invocations",code="200"}'
        assert server.post([0]).status_code == 200  # the series exists from here on
        eventually(lambda: prometheus.query(counted) == 1, "Prometheus to see the first request")
        sent = 25
        for number in range(sent):
            assert server.post([number]).status_code == 200
        eventually(lambda: (prometheus.query(counted) or 0) >= 1 + sent, "Prometheus to see every request")
        assert prometheus.query(counted) == 1 + sent
        # ... and a later scrape still says the same: nothing counted twice.
        scraped = prometheus.target()["lastScrape"]
        eventually(lambda: prometheus.target()["lastScrape"] != scraped, "another scrape")
        assert prometheus.query(counted) == 1 + sent
        assert prometheus.query('smsuper_child_up{role="gunicorn"}') == 1
        assert prometheus.query('smsuper_child_up{role="nginx"}') == 1
    finally:
        prometheus.close()
    assert server.terminate() == 0


# ---- what each job exports ---------------------------------------------------------------------

@pytest.mark.slow
def test_serving_scrape_passes_promtool_and_holds_every_serving_figure(serve):
    server, port = serving_with_metrics(serve)
    for number in range(3):
        assert server.post([number]).status_code == 200
    assert server.post(b"GIF89a", "image/gif").status_code == 415
    assert requests.get(server.url("/execution-parameters"), timeout=10).status_code == 200
    published(port, "smsuper_invocation_phase_duration_seconds_count", 3, phase="output")
    # Counted from nginx's access log, flushed up to a second later.
    published(port, "smsuper_http_requests_total", 1, route="/execution-parameters", code="200")
    text = scrape(port)
    assert promtool_complaints(text) == ""
    samples = parse(text)

    assert value(samples, "smsuper_http_requests_total", route="/invocations", code="200") == 3
    assert value(samples, "smsuper_http_requests_total", route="/invocations", code="415") == 1
    assert value(samples, "smsuper_http_requests_total", route="/execution-parameters", code="200") == 1
    # /ping is answered by nginx: its answers are counted too.
    assert value(samples, "smsuper_http_requests_total", route="/ping", code="200") >= 1
    assert value(samples, "smsuper_http_request_duration_seconds_count", route="/invocations") == 4
    assert value(samples, "smsuper_http_request_duration_seconds_bucket", route="/invocations", le="+Inf") == 4
    for phase in ("input", "predict", "output"):  # the successful invocations only
        assert value(samples, "smsuper_invocation_phase_duration_seconds_count", phase=phase) == 3
    assert value(samples, "smsuper_http_requests_in_flight") == 0
    assert value(samples, "smsuper_model_load_seconds") > 0
    assert value(samples, "smsuper_worker_restarts_total") == 0
    assert value(samples, "smsuper_worker_timeouts_total") == 0

    assert value(samples, "smsuper_nginx_up") == 1
    assert value(samples, "smsuper_nginx_http_requests_total") >= 5
    assert value(samples, "smsuper_nginx_connections", state="writing") >= 1  # this scrape's own request

    for role in ("gunicorn", "nginx"):
        assert value(samples, "smsuper_child_up", role=role) == 1
        assert value(samples, "smsuper_child_restarts_total", role=role) == 0
        assert value(samples, "smsuper_child_resident_memory_bytes", role=role) > 1_000_000
        assert value(samples, "smsuper_child_start_time_seconds", role=role) > time.time() - 3600
        assert value(samples, "smsuper_child_cpu_seconds_total", role=role) >= 0
    # The master, both workers (the master forks the second one up to 0.1 s after the first) and
    # each worker's guard (serve/worker/rescue.py).
    eventually(lambda: value(parse(scrape(port)), "smsuper_child_processes", role="gunicorn") == 5,
               "the gunicorn tree: master, two workers and their guards")
    assert value(samples, "smsuper_init_resident_memory_bytes") > 0
    build = [labels for (name, labels) in samples if name == "smsuper_build_info"]
    assert len(build) == 1 and dict(build[0])["python"] == sys.version.split()[0]
    assert server.terminate() == 0


@pytest.mark.slow
def test_endpoint_answers_while_every_worker_is_busy(serve):
    server, port = serving_with_metrics(serve)
    busy = [background(lambda: server.post({"gate": True})) for _ in range(2)]
    eventually(lambda: in_flight(server.base) == 2, "both workers to be busy")
    samples = parse(scrape(port))
    assert value(samples, "smsuper_http_requests_in_flight") == 2
    (server.base / "open").touch()
    assert [answer().status_code for answer in busy] == [200, 200]
    samples = published(port, "smsuper_http_requests_total", 2,
                        route="/invocations", code="200")
    assert value(samples, "smsuper_http_requests_in_flight") == 0


@pytest.mark.slow
def test_recycled_workers_keep_counts_exact_and_the_scrape_small(serve):
    """SMSUPER_MAX_REQUESTS=1: every request retires its worker. The dead workers'
    files are folded into archives, so a scrape reads a bounded number of files."""
    server, port = serving_with_metrics(serve, SMSUPER_MAX_REQUESTS="1")
    sent = 40
    for number in range(sent):
        assert server.post([number]).status_code == 200
    eventually(lambda: value(parse(scrape(port)), "smsuper_worker_restarts_total") == sent,
               "every retired worker to be counted")
    samples = published(port, "smsuper_http_requests_total", sent, route="/invocations", code="200")
    assert value(samples, "smsuper_invocation_phase_duration_seconds_count", phase="predict") == sent
    assert value(samples, "smsuper_http_requests_in_flight") == 0
    # Three live processes (master, two workers) with four kinds of file each, plus four
    # archives; without compaction there would be one set per retired worker (160 more).
    assert value(samples, "smsuper_multiprocess_files") <= 16
    assert promtool_complaints(scrape(port)) == ""


@pytest.mark.slow
def test_a_worker_killed_for_its_timeout_is_counted(serve):
    server, port = serving_with_metrics(serve, SAGEMAKER_MODEL_SERVER_TIMEOUT="1")
    assert server.post({"sleep": 60}).status_code == 504  # nginx gives up after 1 s
    eventually(lambda: value(parse(scrape(port)), "smsuper_worker_timeouts_total") == 1,
               "gunicorn to kill the stuck worker")
    samples = parse(scrape(port))
    assert value(samples, "smsuper_worker_restarts_total") == 1
    assert value(samples, "smsuper_http_requests_in_flight") == 0  # the killed worker's request is gone


@pytest.mark.slow
def test_counts_survive_a_killed_gunicorn_master_and_nginx_comes_back_with_its_figures(serve):
    server, port = serving_with_metrics(serve)
    for number in range(3):
        assert server.post([number]).status_code == 200
    # nginx's access log (the source of the count) is flushed once a second: a SIGKILL takes
    # the unflushed rest with it, so the three are counted before nginx is killed below.
    published(port, "smsuper_http_requests_total", 3, route="/invocations", code="200")
    os.kill(server.gunicorn_master(), signal.SIGKILL)
    eventually(lambda: "gunicorn exited" in server.stderr(), "smsuper to notice the dead master")
    server.wait_ready()
    os.kill(server.child("nginx: master"), signal.SIGKILL)
    eventually(lambda: "nginx exited" in server.stderr(), "smsuper to notice the dead nginx")
    server.wait_ready()
    for number in range(2):
        assert server.post([number]).status_code == 200
    # The dead master's and workers' files are folded into the archives: counts go on.
    eventually(lambda: value(parse(scrape(port)), "smsuper_nginx_up") == 1, "nginx's stub_status again")
    samples = published(port, "smsuper_http_requests_total", 5, route="/invocations", code="200")
    assert value(samples, "smsuper_child_restarts_total", role="gunicorn") == 1
    assert value(samples, "smsuper_child_restarts_total", role="nginx") == 1
    assert value(samples, "smsuper_child_last_exit_code", role="gunicorn") == 128 + signal.SIGKILL
    assert value(samples, "smsuper_http_requests_in_flight") == 0


TRAINING_SCRIPT = r"""
import os, sys, time
print("epoch 1 loss=0.90 accuracy=0.50", flush=True)
print("epoch 2 loss=0.45 accuracy=0.75", flush=True)
sys.stdout.write("progress loss=0.40\r")  # a progress bar's line, drawn without a newline
sys.stdout.flush()
print("validation: accuracy=n/a", flush=True)  # matches the name but not a number: ignored
print("val_rmse 1.5e-3", file=sys.stderr, flush=True)
while not os.path.exists(os.path.join(os.environ["SAGEMAKER_BASE_DIR"], "finish")):
    time.sleep(0.02)
"""

DEFINITIONS = [
    {"Name": "train:loss", "Regex": "loss=([0-9.]+)"},
    {"Name": "train:accuracy", "Regex": r"accuracy=(\S+)"},
    {"Name": "validation:rmse", "Regex": r"val_rmse ([0-9.e-]+)"},
    {"Name": "never:seen", "Regex": "nothing prints this=([0-9]+)"},
]


def test_training_regexes_turn_log_lines_into_gauges(pyz, base_env, tmp_path):
    base = train_layout(tmp_path / "ml", TRAINING_SCRIPT)
    extra = metrics_env(SAGEMAKER_PROGRAM="train.py", SMSUPER_METRIC_DEFINITIONS=json.dumps(DEFINITIONS))
    port = int(extra["SMSUPER_METRICS_PORT"])
    env = train_environment(base_env, base, **extra)
    env["SAGEMAKER_BASE_DIR"] = str(base)
    proc = subprocess.Popen(train_command(pyz), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        def all_seen() -> bool:
            samples = parse(scrape_when_up(port, proc))
            return value(samples, "smsuper_training_metric", name="validation:rmse") is not None

        eventually(all_seen, "the script's lines to be parsed")
        text = scrape(port)
        assert promtool_complaints(text) == ""
        samples = parse(text)
        assert value(samples, "smsuper_training_metric", name="train:loss") == 0.40  # the \r line counts
        assert value(samples, "smsuper_training_metric", name="train:accuracy") == 0.75
        assert value(samples, "smsuper_training_metric", name="validation:rmse") == 1.5e-3
        assert value(samples, "smsuper_training_metric", name="never:seen") is None
        assert value(samples, "smsuper_training_phase", phase="training") == 1
        assert value(samples, "smsuper_training_phase", phase="completed") == 0
        assert value(samples, "smsuper_training_duration_seconds") > 0
        assert value(samples, "smsuper_training_exit_code") is None  # still running
        assert value(samples, "smsuper_child_up", role="script") == 1
    finally:
        (base / "finish").touch()
        out, err = proc.communicate(timeout=WAIT_LIMIT)
    assert proc.returncode == 0, err.decode()
    assert b"epoch 2 loss=0.45 accuracy=0.75\n" in out  # parsing never changes what is relayed


def test_pass_through_command_exports_its_child(pyz, base_env, tmp_path):
    extra = metrics_env()
    command = WaitingCommand(pyz, dict(base_env, **extra), tmp_path / "gate")
    with command as proc:
        text = scrape_when_up(int(extra["SMSUPER_METRICS_PORT"]), proc)
        assert promtool_complaints(text) == ""
        samples = parse(text)
        assert value(samples, "smsuper_child_up", role="command") == 1
        assert value(samples, "smsuper_child_processes", role="command") >= 1
        assert value(samples, "smsuper_child_last_exit_code", role="command") is None
    assert command.proc.returncode == 0


def test_a_bad_request_to_the_endpoint_gets_a_clear_answer_and_the_job_goes_on(pyz, base_env, tmp_path):
    extra = metrics_env()
    port = int(extra["SMSUPER_METRICS_PORT"])
    command = WaitingCommand(pyz, dict(base_env, **extra), tmp_path / "gate")
    with command as proc:
        scrape_when_up(port, proc)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 404
        assert requests.post(f"http://127.0.0.1:{port}/metrics", data=b"x", timeout=10).status_code == 405
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:  # sends nothing
            scrape(port)  # another client is served meanwhile
            idle.sendall(b"garbage\r\n\r\n")
            assert idle.recv(100).startswith(b"HTTP/1.1 400")
        assert proc.poll() is None
    assert command.proc.returncode == 0


# ---- which port -------------------------------------------------------------------------------

def test_metrics_port_comes_from_the_safe_port_range(pyz, base_env, tmp_path):
    low = free_port()
    env = dict(base_env, SAGEMAKER_SAFE_PORT_RANGE=f"{low}-{low + 3}", SMSUPER_LOG_LEVEL="info")
    env.pop("SMSUPER_METRICS_PORT")
    command = WaitingCommand(pyz, env, tmp_path / "gate")
    with command as proc:
        assert "smsuper_child_up" in scrape_when_up(low, proc)
    assert f":{low}/metrics" in command.stderr


def test_metrics_port_equal_to_the_serving_port_stops_serve_with_a_clear_error(pyz, base_env, tmp_path):
    port = str(free_port())
    env = dict(base_env, SAGEMAKER_BIND_TO_PORT=port, SMSUPER_METRICS_PORT=port, SMSUPER_APP="nothing:app",
               SAGEMAKER_BASE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, str(pyz), "serve"], env=env, capture_output=True, text=True,
                          timeout=WAIT_LIMIT)
    assert done.returncode == 2
    assert f"SMSUPER_METRICS_PORT={port} is the serving port" in done.stderr


def test_a_taken_metrics_port_costs_a_warning_not_the_job(pyz, base_env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, str(pyz), "sh", "-c", "echo ran; exit 3"],
                              env=dict(base_env, SMSUPER_METRICS_PORT=str(port)), capture_output=True, text=True,
                              timeout=WAIT_LIMIT)
    assert done.returncode == 3 and done.stdout == "ran\n"
    assert f"no metrics endpoint: cannot listen on port {port}" in done.stderr


def test_metrics_port_0_turns_the_endpoint_off(pyz, base_env):
    done = subprocess.run([sys.executable, str(pyz), "true"], env=dict(base_env, SMSUPER_METRICS_PORT="0"),
                          capture_output=True, text=True, timeout=WAIT_LIMIT)
    assert done.returncode == 0 and "metrics at" not in done.stderr
    on = subprocess.run([sys.executable, str(pyz), "true"], env=dict(base_env, SMSUPER_LOG_LEVEL="info", **metrics_env()),
                        capture_output=True, text=True, timeout=WAIT_LIMIT)
    assert on.returncode == 0 and "metrics at" in on.stderr


# ---- logs -----------------------------------------------------------------------------------

def _json_lines(text: str, where: str) -> List[dict]:
    parsed = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a line of {where} is not JSON: {line!r}") from None
        assert set(record) == {"time", "source", "level", "message"}, record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"]), record
        parsed.append(record)
    return parsed


@pytest.mark.slow
def test_json_log_lines_parse(serve):
    server = serve(SMSUPER_LOG_FORMAT="json")
    server.wait_ready()
    assert server.post([1]).status_code == 200
    assert server.post(b"GIF89a", "image/gif").status_code == 415
    eventually(lambda: "/invocations" in server.stdout(), "the access log")
    assert server.terminate() == 0
    access = _json_lines(server.stdout(), "stdout")
    assert {record["source"] for record in access} == {"nginx"}
    assert any('"POST /invocations HTTP/1.1" 415' in record["message"] for record in access)
    assert not any("/ping" in record["message"] for record in access)
    own = _json_lines(server.stderr(), "stderr")
    sources = {record["source"] for record in own}
    assert {"smsuper", "gunicorn"} <= sources, sources
    assert any(record["level"] == "warning" and "415" in record["message"] for record in own)


@pytest.mark.slow
def test_ping_lines_are_logged_only_when_asked(serve):
    server = serve(SMSUPER_LOG_PING="true")
    server.wait_ready()
    assert server.post([1]).status_code == 200
    eventually(lambda: "GET /ping" in server.stdout() and "POST /invocations" in server.stdout(),
               "/ping in the access log")
    assert server.terminate() == 0


SECRET_SCRIPT = r"""
import json, os, sys
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as handle:
    json.dump({"argv": sys.argv[1:], "key": os.environ["AWS_SECRET_ACCESS_KEY"],
               "hps": json.loads(os.environ["SM_HPS"])}, handle)
"""


def test_secrets_never_reach_the_log(pyz, base_env, tmp_path):
    secrets = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
               "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEXAMPLETOKEN",
               "DATABASE_PASSWORD": "hunter2-db", "MY_INDEX": "https://bob:url-pass-777@pypi.example.com/simple"}
    hyperparameters = {"api_token": "hp-token-value-123", "epochs": "3"}
    base = train_layout(tmp_path / "ml", SECRET_SCRIPT, hyperparameters=hyperparameters)
    env = train_environment(base_env, base, SAGEMAKER_PROGRAM="train.py", SMSUPER_LOG_LEVEL="debug", **secrets)
    done = subprocess.run(train_command(pyz), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=WAIT_LIMIT)
    assert done.returncode == 0, done.stderr
    logged = done.stdout + done.stderr
    assert "the training program's environment" in logged
    assert re.search(r"--api_token '?\*{4}", logged), logged
    for secret in [*secrets.values(), hyperparameters["api_token"], "url-pass-777"]:
        assert secret not in logged
    assert "MY_INDEX=https://bob:****@pypi.example.com/simple" in logged
    assert "epochs" in logged  # what is not secret stays readable
    # Masking is for the log only: the script gets every value unchanged.
    seen = json.loads((base / "model" / "seen.json").read_text())
    assert seen["key"] == secrets["AWS_SECRET_ACCESS_KEY"]
    assert seen["argv"] == ["--api_token", "hp-token-value-123", "--epochs", "3"]
    assert seen["hps"] == {"api_token": "hp-token-value-123", "epochs": 3}
