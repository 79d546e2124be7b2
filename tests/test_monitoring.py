"""The operators' kit in examples/monitoring/, proven against a real Prometheus.

`promtool` checks the rules and runs their unit tests (each alert firing on its
fault and quiet on its look-alike). Then a real Prometheus (Debian's package)
scrapes a healthy `smsuper serve`, one whose model fails to load and a short
`smsuper train`, each as PID 1 of its own PID namespace, with the shipped rules
(only their `for:` shortened, evaluated every second): every query of every
dashboard panel returns data, and the alerts fire on the faults they are for.
Waits have generous deadlines and are never assertions about speed.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import requests

from helpers import (GATED_MODEL, PROMETHEUS, PROMTOOL, Prometheus, Server, background, children_of, eventually,
                     free_port, host_pid, in_flight, parse, scrape, serve_environment, serve_layout, train_command,
                     train_environment, train_layout, value)

KIT = Path(__file__).resolve().parent.parent / "examples" / "monitoring"
RULES = KIT / "smsuper-rules.yml"
RULE_TESTS = KIT / "smsuper-rules.test.yml"
DASHBOARD = KIT / "smsuper-dashboard.json"
WAIT_LIMIT = 120
# What Grafana would put in place of the dashboard's variables: every job and instance.
VARIABLES = {"$job": ".*", "$instance": ".*", "$__rate_interval": "1m"}

pytestmark = pytest.mark.skipif(not (os.path.exists(PROMETHEUS) and os.path.exists(PROMTOOL)),
                                reason="prometheus is not installed (scripts/install-test-deps.sh installs it)")


def test_promtool_checks_the_rules():
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_every_alert_has_a_unit_test_that_passes():
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts and alerts == tested, f"alerts without a unit test: {sorted(alerts - tested)}"
    ran = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=KIT, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout + ran.stderr


def test_every_rule_has_a_description_and_a_summary():
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 10
    for rule in alerts:
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]


def dashboard_queries() -> List[tuple]:
    """(panel title, expression with the template variables substituted) for every target."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expression = target["expr"]
            for name, substitute in VARIABLES.items():
                expression = expression.replace(name, substitute)
            assert "$" not in expression, f"{panel['title']}: unknown variable in {expression}"
            found.append((panel["title"], expression))
    return found


# ---- the real thing -----------------------------------------------------------------------------

FAILING_MODEL = """
def model_fn(model_dir):
    raise RuntimeError("weights file is corrupt")
"""

TRAINING_SCRIPT = r"""
import os, time
base = os.environ["SAGEMAKER_BASE_DIR"]
epoch = 0
while not os.path.exists(os.path.join(base, "finish")):
    epoch += 1
    print(f"epoch {epoch} loss={1 / epoch:.4f}", flush=True)
    time.sleep(0.5)
"""

DEFINITIONS = [{"Name": "train:loss", "Regex": "loss=([0-9.]+)"},
               {"Name": "validation:accuracy", "Regex": "val_acc=([0-9.]+)"}]  # never printed


class Training:
    """`smsuper train` as PID 1 of its own namespace, running until `finish` exists."""

    def __init__(self, pyz: Path, base_env: dict, directory: Path):
        self.base = train_layout(directory / "ml", TRAINING_SCRIPT)
        self.metrics_port = free_port()
        env = train_environment(base_env, self.base, SAGEMAKER_PROGRAM="train.py",
                                SMSUPER_METRICS_PORT=str(self.metrics_port),
                                SMSUPER_METRIC_DEFINITIONS=json.dumps(DEFINITIONS))
        self.log = open(directory / "train.log", "wb")
        self.proc = subprocess.Popen(train_command(pyz), env=env, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def close(self) -> None:
        (self.base / "finish").touch()
        try:
            self.proc.wait(timeout=WAIT_LIMIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def serving(pyz: Path, base_env: dict, directory: Path, code: str, **extra: str) -> Server:
    base = serve_layout(directory / "ml", code)
    env = serve_environment(base_env, base, directory / "run", SMSUPER_METRICS_PORT=str(free_port()), **extra)
    server = Server(pyz, env, base)
    server.metrics_port = int(env["SMSUPER_METRICS_PORT"])
    return server


def fast_rules(directory: Path) -> Path:
    """The shipped rules with every `for:` at 1 s, so the test need not wait minutes."""
    text, replaced = re.subn(r"^(\s+)for: \S+$", r"\1for: 1s", RULES.read_text(), flags=re.MULTILINE)
    assert replaced >= 10
    copy = directory / "rules.yml"
    copy.write_text(text)
    return copy


def gunicorn_workers(server: Server) -> List[int]:
    return children_of(server.gunicorn_master())


def restarts(server: Server) -> float:
    return value(parse(scrape(server.metrics_port)), "smsuper_worker_restarts_total") or 0


@pytest.mark.slow
def test_dashboard_panels_have_data_and_alerts_fire_on_their_faults(pyz, base_env, tmp_path):
    queries = dashboard_queries()
    started: list = []
    try:
        healthy = serving(pyz, base_env, tmp_path / "healthy", GATED_MODEL)
        started.append(healthy)
        broken = serving(pyz, base_env, tmp_path / "broken", FAILING_MODEL)
        started.append(broken)
        training = Training(pyz, base_env, tmp_path / "train")
        started.append(training)
        healthy.wait_ready()
        prometheus = Prometheus(tmp_path / "prometheus", {
            "serve": [healthy.metrics_port, broken.metrics_port], "train": [training.metrics_port]},
            fast_rules(tmp_path))
        started.append(prometheus)
        eventually(lambda: prometheus.all_up(3), "Prometheus to scrape all three targets", WAIT_LIMIT)

        # Traffic Prometheus sees arrive: successes, and the clients' mistakes nginx and the handlers refuse.
        # rate() counts only what a series gains after Prometheus first saw it: one of each first.
        assert healthy.post([0]).status_code == 200
        assert healthy.post(b"GIF89a", "image/gif").status_code == 415
        for seen in ('smsuper_http_requests_total{route="/invocations",code="415"}',
                     'smsuper_invocation_phase_duration_seconds_count{phase="predict"}'):
            eventually(lambda: prometheus.values(seen) == [1], f"Prometheus to see {seen} at 1", WAIT_LIMIT)
        for number in range(10):
            assert healthy.post([number]).status_code == 200
        for _ in range(10):
            assert healthy.post(b"GIF89a", "image/gif").status_code == 415
        assert healthy.post(b"0" * (6 * 1024 * 1024 + 1), "text/csv").status_code == 413
        # A worker killed mid-request (a 502), then three more killed idle: a restart loop.
        doomed = background(lambda: healthy.post({"gate": True}))
        eventually(lambda: in_flight(healthy.base) == 1, "the request to reach a worker")
        holder = int(os.listdir(healthy.base / "inflight")[0].split("-")[0])
        for kill in range(4):
            before = restarts(healthy)
            workers = gunicorn_workers(healthy)
            victim = host_pid(holder, healthy.init_pid()) if kill == 0 else workers[0]
            os.kill(victim, signal.SIGKILL)
            eventually(lambda: restarts(healthy) > before, "gunicorn to replace the killed worker", WAIT_LIMIT)
            healthy.wait_ready()
        assert doomed().status_code == 502
        (healthy.base / "open").touch()
        for number in range(5):
            assert healthy.post([number]).status_code == 200

        # Every panel's every query has data: at least one finite value (NaN is a panel with no line).
        def has_data(expression: str) -> bool:
            return any(math.isfinite(number) for number in prometheus.values(expression))

        for title, expression in queries:
            eventually(lambda: has_data(expression), f"data for the panel {title!r}: {expression}", WAIT_LIMIT)

        # The faults, and the alerts for them.
        eventually(lambda: prometheus.firing("SmsuperEndpointNotReady", broken.metrics_port),
                   "SmsuperEndpointNotReady for the model that fails to load", WAIT_LIMIT)
        eventually(lambda: prometheus.firing("SmsuperWorkerRestartLoop", healthy.metrics_port),
                   "SmsuperWorkerRestartLoop for the workers killed again and again", WAIT_LIMIT)
        eventually(lambda: prometheus.firing("SmsuperClientErrors", healthy.metrics_port),
                   "SmsuperClientErrors for the 415 and the 413", WAIT_LIMIT)
        eventually(lambda: prometheus.firing("SmsuperTrainingMetricAbsent", training.metrics_port),
                   "SmsuperTrainingMetricAbsent for validation:accuracy, declared but never printed", WAIT_LIMIT)
        alerts = prometheus.api("alerts")["alerts"]
        absent = [a for a in alerts if a["labels"]["alertname"] == "SmsuperTrainingMetricAbsent"]
        assert {a["labels"]["name"] for a in absent} == {"validation:accuracy"}  # train:loss is printed
        # ... and none for what is healthy.
        assert not prometheus.firing("SmsuperEndpointNotReady", healthy.metrics_port)
        assert not prometheus.firing("SmsuperWorkerRestartLoop", broken.metrics_port)
        assert not prometheus.firing("SmsuperNginxDown")
        assert not prometheus.firing("SmsuperTrainingStuck")
        if os.environ.get("SMSUPER_RENDER_DASHBOARD"):  # the README's picture, drawn from this run's data
            sys.path.insert(0, str(KIT))
            from render_dashboard import render

            render(f"http://127.0.0.1:{prometheus.port}", os.environ["SMSUPER_RENDER_DASHBOARD"], 1.0)
    finally:
        for thing in reversed(started):
            if isinstance(thing, Server):
                (thing.base / "open").touch()
            thing.close()


# ---- the series the rules need, one by one ---------------------------------------------------------

@pytest.mark.slow
def test_recycled_workers_are_told_apart_from_dying_ones(pyz, base_env, tmp_path):
    """SMSUPER_MAX_REQUESTS=1 replaces a worker after every request: planned, so no restart loop."""
    server = serving(pyz, base_env, tmp_path, GATED_MODEL, SMSUPER_MAX_REQUESTS="1")
    try:
        server.wait_ready()
        sent = 6
        for number in range(sent):
            assert server.post([number]).status_code == 200
        eventually(lambda: restarts(server) == sent, "every recycled worker to be replaced")
        samples = parse(scrape(server.metrics_port))
        assert value(samples, "smsuper_worker_recycles_total") == sent
        os.kill(gunicorn_workers(server)[0], signal.SIGKILL)  # one that really died
        eventually(lambda: restarts(server) == sent + 1, "the killed worker to be replaced")
        assert value(parse(scrape(server.metrics_port)), "smsuper_worker_recycles_total") == sent
    finally:
        server.close()


@pytest.mark.slow
def test_readiness_and_limits_are_exported_and_a_fifo_cannot_hang_the_scrape(pyz, base_env, tmp_path):
    server = serving(pyz, base_env, tmp_path, FAILING_MODEL, SAGEMAKER_MODEL_SERVER_TIMEOUT="17",
                     SMSUPER_WORKER_THREADS="3", SAGEMAKER_MAX_PAYLOAD_IN_MB="9")
    try:
        def failed() -> bool:
            try:
                samples = parse(scrape(server.metrics_port))
            except requests.RequestException:
                return False
            return value(samples, "smsuper_serving_status", status="failed") == 1

        eventually(failed, "the scrape to say the model failed to load")
        samples = parse(scrape(server.metrics_port))
        assert value(samples, "smsuper_ready") == 0
        assert value(samples, "smsuper_ready_workers") == 0
        assert value(samples, "smsuper_serving_status", status="ready") == 0
        assert value(samples, "smsuper_model_server_workers") == 2
        assert value(samples, "smsuper_model_server_worker_threads") == 3
        assert value(samples, "smsuper_model_server_timeout_seconds") == 17
        assert value(samples, "smsuper_max_payload_bytes") == 9 * 1024 * 1024
        # The runtime directory's shared/ part is the workload's: a FIFO in place of ping-status.json must
        # neither hang PID 1's loop nor become a label.
        status = tmp_path / "run" / "shared" / "ping-status.json"
        status.unlink()
        os.mkfifo(status)
        samples = parse(scrape(server.metrics_port))  # answered: the FIFO did not hang PID 1
        # PID 1 may already have renamed a new status over the FIFO (the failing server
        # restarts); either way exactly one known status is 1, and the FIFO became no label.
        states = {dict(labels)["status"]: v for (name, labels), v in samples.items()
                  if name == "smsuper_serving_status"}
        assert set(states) == {"ready", "starting", "loading", "restarting", "failed"}, states
        assert sorted(states.values()) == [0, 0, 0, 0, 1], states
        assert value(samples, "smsuper_ready") == 0
    finally:
        server.close()
