"""Faults in the user's code and in the worker processes, as a client of `smsuper serve` sees them.

Real nginx, real gunicorn, the built pyz as PID 1 of a PID namespace (test_serve's
fixture). Each case is a fault a careless handler really commits: it calls
os._exit() with whatever code it likes, or forks a helper process and forgets
it. What is asserted is what a user would notice: the status of each request,
whether the job keeps serving, and what the restart counters say.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable, List

import pytest
import requests

from helpers import children_of, eventually, host_pid, in_flight, metrics_env, parse, scrape, value

pytestmark = [pytest.mark.slow]  # serving stacks

# A handler whose faults are chosen by the request.
FAULTY_MODEL = """
import ctypes, os, time, uuid

BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def model_fn(model_dir):
    return "model"

def predict_fn(data, model):
    if isinstance(data, dict) and data.get("native_call_holding_the_gil"):
        # A native call that never releases the GIL (PyDLL keeps it), blocked until the test
        # writes a byte into the FIFO: no thread of this worker runs meanwhile.
        os.makedirs(os.path.join(BASE, "inflight"), exist_ok=True)
        open(os.path.join(BASE, "inflight", uuid.uuid4().hex), "w").close()
        fd = os.open(os.path.join(BASE, "gate.fifo"), os.O_RDWR)
        ctypes.PyDLL(None).read(fd, ctypes.create_string_buffer(1), 1)
        return {"released": True}
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
    eventually(lambda: "exited with code 4 after it had booted" in server.stderr(), "the last exit in the log")
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


@pytest.mark.parametrize("threads", ["1", "2"], ids=["keep-alive worker", "gthread worker"])
def test_a_daemon_forked_by_the_handler_does_not_keep_nginx_waiting(serve, threads):
    """The user's code forks (no exec) and its worker dies: the child must hold none of
    the worker's connections, or nginx waits on them for the whole timeout (504)."""
    server, port = _serving(serve, SAGEMAKER_MODEL_SERVER_TIMEOUT="30", SMSUPER_WORKER_THREADS=threads)
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


def test_every_worker_killed_costs_no_request_sent_afterwards(serve):
    """Both workers killed while they keep idle connections: nothing of theirs (their guards'
    copies included) may keep one open, or nginx sends the next request into it and waits."""
    server, _ = _serving(serve)
    assert _concurrently(server, clients=8, each=4) == [200] * 32
    old = _workers(server)
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: len(set(_workers(server)) - set(old)) >= 2, "two new workers")
    server.wait_ready()
    assert [server.post([n]).status_code for n in range(40)] == [200] * 40
    assert _concurrently(server, clients=8, each=4) == [200] * 32


def _answered_while(server, clients: int, each: int, cannot_run: Callable[[], bool],
                    release: Callable[[], None]) -> List[int]:
    """_concurrently's statuses, all collected while a worker cannot run; then `release` it."""
    box: List[List[int]] = []
    sender = threading.Thread(target=lambda: box.append(_concurrently(server, clients, each)), daemon=True)
    sender.start()
    sender.join(150)  # a safety net: a request stuck on the worker that cannot run waits for it
    finished_first = not sender.is_alive() and cannot_run()
    release()
    sender.join(300)
    assert finished_first, "requests waited for the worker that could not run"
    return box[0]


def _workers(server) -> List[int]:
    master = server.gunicorn_master()
    eventually(lambda: len(children_of(master)) == 2, "two workers")
    return children_of(master)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


def _nginx_connections(pid: int) -> int:
    """How many of nginx's connections to gunicorn's socket this worker holds (/proc/net/unix
    names the socket an accepted connection came from)."""
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    with open("/proc/net/unix") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    # Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
    return sum(1 for row in rows if len(row) >= 8 and row[5] == "03" and int(row[6]) in inodes
               and row[7].endswith("/gunicorn.sock"))


def _holds_a_lock(pid: int) -> bool:
    """Whether the process holds a POSIX record lock: a keep-alive worker does while it serves a
    request (a worker stopped then keeps that one connection, and its request waits for it)."""
    with open("/proc/locks") as locks:
        return any(line.split()[1:2] == ["POSIX"] and line.split()[4] == str(pid) for line in locks)


# Long enough that neither nginx (504) nor gunicorn (killing the worker) gives up on a
# request that waits for the stopped worker before the test's safety net does.
PATIENT = "300"


def test_a_stopped_worker_keeps_no_request_waiting(serve):
    """SIGSTOP one worker: nothing of it runs, not even the thread that hands its idle
    connections over. Requests nginx sends on those connections are answered by the
    other worker, all of them before the stopped one is continued."""
    server, _ = _serving(serve, SAGEMAKER_MODEL_SERVER_TIMEOUT=PATIENT)
    stopped = 0
    for _ in range(20):  # until the worker is stopped between requests, holding idle connections
        assert _concurrently(server, clients=8, each=4) == [200] * 32
        stopped = max(_workers(server), key=_nginx_connections)
        os.kill(stopped, signal.SIGSTOP)
        eventually(lambda: _state(stopped) == "T", "the worker to be stopped")
        if _nginx_connections(stopped) > 0 and not _holds_a_lock(stopped):
            break
        os.kill(stopped, signal.SIGCONT)
    assert _nginx_connections(stopped) > 0 and not _holds_a_lock(stopped), "no worker idle with connections"
    statuses = _answered_while(server, clients=8, each=10, cannot_run=lambda: _state(stopped) == "T",
                               release=lambda: os.kill(stopped, signal.SIGCONT))
    assert statuses == [200] * 80, {s: statuses.count(s) for s in set(statuses)}
    eventually(lambda: "has not run for over" in server.stderr(), "the guard's warning in the log")
    # Continued, the worker forgets the connections it lost and serves on.
    assert _concurrently(server, clients=8, each=4) == [200] * 32
    assert stopped in _workers(server)
    assert server.terminate() == 0


def test_a_native_call_holding_the_gil_keeps_no_request_waiting(serve):
    """The same with a worker busy in a native call that holds the GIL: its own watchdog
    thread cannot run, so the hand-over must come from outside the worker."""
    server, _ = _serving(serve, SAGEMAKER_MODEL_SERVER_TIMEOUT=PATIENT)
    os.mkfifo(server.base / "gate.fifo")
    assert _concurrently(server, clients=8, each=4) == [200] * 32
    answers: List[requests.Response] = []
    holder = threading.Thread(target=lambda: answers.append(server.post({"native_call_holding_the_gil": True})),
                              daemon=True)
    holder.start()
    eventually(lambda: in_flight(server.base) == 1, "the native call to begin")

    def release() -> None:
        fd = os.open(server.base / "gate.fifo", os.O_RDWR)
        os.write(fd, b"x")
        os.close(fd)

    statuses = _answered_while(server, clients=8, each=10, cannot_run=holder.is_alive, release=release)
    assert statuses == [200] * 80, {s: statuses.count(s) for s in set(statuses)}
    holder.join(300)
    assert answers and answers[0].json() == {"released": True}
    assert _concurrently(server, clients=8, each=4) == [200] * 32


def test_an_answer_whose_headers_nginx_cannot_hold_runs_once_and_is_a_502(serve):
    """nginx reads an answer's headers into one 64 KiB buffer and calls a larger header
    "invalid", the very answer that makes it resend a request a guard took back. The
    worker must never give it one: the model's code runs once and the client gets a 502."""
    server, _ = _serving(serve, code="""
        import os

        BASE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

        def model_fn(model_dir):
            return "model"

        def predict_fn(data, model, context):
            if data == {"huge_header": True}:
                with open(os.path.join(BASE, "ran"), "a") as handle:
                    handle.write("ran\\n")
                context.set_custom_attributes("a" * 70000)
            return data
    """)
    answer = server.post({"huge_header": True})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]
    assert (server.base / "ran").read_text() == "ran\n"
    # The worker's line reaches the log through PID 1's relay, maybe after the client's answer.
    eventually(lambda: "more than the" in server.stderr(), "the worker to say why it closed the connection")
    assert server.post([1]).json() == [1]
