"""Faults in the user's code and in the worker processes, as a client of `smsuper serve` sees them.

Real nginx, real gunicorn, the built pyz as PID 1 of a PID namespace (test_serve's
fixture). Each case is a fault a careless handler really commits: it calls
os._exit() with whatever code it likes, or forks a helper process and forgets
it. What is asserted is what a user would notice: the status of each request,
whether the job keeps serving, and what the restart counters say.
"""

from __future__ import annotations

import os
import threading
from typing import List

import requests

from test_metrics import metrics_env, parse, scrape, value
from test_serve import eventually, host_pid, serve  # noqa: F401 (fixture)

# A handler whose faults are chosen by the request.
FAULTY_MODEL = """
import os, time

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    if isinstance(data, dict) and "exit" in data:
        os._exit(data["exit"])
    if isinstance(data, dict) and data.get("fork_a_daemon_and_die"):
        child = os.fork()
        if child == 0:
            # A helper the user forgot: it sleeps on with everything the worker had open.
            time.sleep(3600)
            os._exit(0)
        with open(os.path.join(BASE, "daemon.pid"), "w") as handle:
            handle.write(str(child))
        os._exit(1)
    return data
"""


def _serving(serve, code: str = FAULTY_MODEL, **extra: str):
    env = metrics_env(**extra)
    server = serve(code=code, **env)
    server.wait_ready()
    return server, int(env["SMSUPER_METRICS_PORT"])


def _concurrently(server, clients: int, each: int) -> List[int]:
    """Status codes of clients x each requests, sent by `clients` threads at once."""
    statuses: List[int] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        for number in range(offset, offset + each):
            try:
                response = server.post([number])
                status = response.status_code if response.json() == [number] or response.status_code != 200 else -1
            except requests.RequestException:
                status = 0
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=client, args=(1000 * n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return statuses


def test_a_handler_exiting_3_or_4_costs_its_worker_not_the_server(serve):
    """gunicorn reads exit codes 3 and 4 as "the worker could not boot" and halts the
    whole server; from a worker that has served, they are a dead worker like any other."""
    server, port = _serving(serve)
    master = server.gunicorn_master()
    codes = [3, 4, 3, 4, 3, 4]  # six in a minute would use up PID 1's restart limit
    for code in codes:
        died = server.post({"exit": code})
        assert died.status_code == 502, (code, died.text)
        assert died.json()["error"]
    for number in range(6):
        assert server.post([number]).json() == [number]
    assert server.proc.poll() is None
    assert server.gunicorn_master() == master, "the gunicorn master was restarted"
    eventually(lambda: value(parse(scrape(port)), "smsuper_worker_restarts_total") == len(codes),
               "each dead worker to be counted as a worker restart")
    samples = parse(scrape(port))
    assert value(samples, "smsuper_child_restarts_total", role="gunicorn") == 0
    logged = server.stderr()
    assert "Worker failed to boot" not in logged and "App failed to load" not in logged
    assert "exited with code 3 after it had booted" in logged
    assert server.terminate() == 0


def test_exit_3_while_the_model_loads_is_still_a_server_that_cannot_start(serve):
    """The other side of the case above: a worker that never booted stops the server, and
    PID 1 ends the job once it keeps failing (instead of a worker crash loop)."""
    server = serve(code="""
        import os
        def model_fn(model_dir):
            os._exit(3)
    """, SMSUPER_RESTART_LIMIT="2")
    assert server.proc.wait(timeout=120) != 0
    logged = server.stderr()
    assert "Worker failed to boot" in logged
    assert "gunicorn keeps failing" in logged


def test_a_daemon_forked_by_the_handler_does_not_keep_nginx_waiting(serve):
    """The user's code forks (no exec) and its worker dies: the child must hold none of
    the worker's connections, or nginx waits on them for the whole timeout (504)."""
    server, port = _serving(serve, SAGEMAKER_MODEL_SERVER_TIMEOUT="30")
    # Concurrent traffic first, so that both workers keep idle connections nginx will reuse.
    assert _concurrently(server, clients=8, each=4) == [200] * 32
    died = server.post({"fork_a_daemon_and_die": True})
    assert died.status_code == 502, died.text
    daemon = int((server.base / "daemon.pid").read_text())
    host_pid(daemon, server.init_pid())  # it still runs (raises if not)
    # Every connection of the dead worker is gone with it: nginx sends no request into one.
    assert _concurrently(server, clients=8, each=6) == [200] * 48
    eventually(lambda: value(parse(scrape(port)), "smsuper_worker_restarts_total") == 1,
               "the dead worker to be counted")
