"""nginx keeps its connections to the sync workers open (smsuper/serve/worker/keepalive_worker.py).

What a user would notice if it went wrong: requests answered over a kept
connection with a wrong or stale body, a request stuck behind a busy worker
while another worker is free, 502s when a worker retires, and (the reason for
it all) a connection per request again. Real nginx, real gunicorn, real HTTP.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import List

import pytest
import requests

from helpers import background, eventually, in_flight

pytestmark = [pytest.mark.slow]  # each test starts a serving stack

# A user WSGI app that answers with the identity of the connection it came on,
# (SO_COOKIE, 57: a number unique to each socket while the kernel runs), and never
# reads a POST's body (the worker must discard it before the next request).
CONNECTION_APP = """
import os, socket

def app(environ, start_response):
    if environ["PATH_INFO"] == "/ping":
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    connection = environ["gunicorn.socket"]
    cookie = int.from_bytes(connection.getsockopt(socket.SOL_SOCKET, 57, 8), "little")
    body = f"{os.getpid()} {cookie} {environ['CONTENT_LENGTH']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _connection_app(serve, tmp_path: Path, **env: str):
    program = tmp_path / "program"
    program.mkdir()
    (program / "connection_app.py").write_text(CONNECTION_APP)
    (tmp_path / "ml" / "model").mkdir(parents=True)
    server = serve(cwd=program, SMSUPER_APP="connection_app:app", **env)
    server.wait_ready()
    return server


def test_sequential_requests_share_one_connection_and_unread_bodies_are_discarded(serve, tmp_path):
    server = _connection_app(serve, tmp_path)
    answers = [server.post("x" * size, "text/plain").text.split() for size in range(1, 41)]
    # Every request was parsed cleanly although the app read none of the bodies before it.
    assert [int(length) for _, _, length in answers] == list(range(1, 41))
    connections = {(pid, cookie) for pid, cookie, _ in answers}
    # One client, one request at a time: nginx reuses its idle connection instead of
    # opening one per request (gunicorn's own sync worker would show 40 here).
    assert len(connections) <= 2, connections


def test_a_busy_worker_hands_its_idle_connections_to_the_free_one(serve):
    server = serve()
    server.wait_ready()
    # Concurrent traffic first, so that both workers hold idle connections nginx will reuse.
    warm = [background(lambda i=i: server.post([i])) for i in range(16)]
    assert [w().status_code for w in warm] == [200] * 16
    gated = background(lambda: server.post({"gate": True}))
    eventually(lambda: in_flight(server.base) == 1, "one worker to be held at the gate")
    # While that worker is held, eight clients keep sending. A request nginx sent on one
    # of the held worker's idle connections would wait for the gate; the watchdog hands
    # those connections to the free worker, so every one of these is answered first.
    answered: List[int] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        for value in range(offset, offset + 25):
            response = server.post([value])
            with lock:
                answered.append(response.json()[0] if response.status_code == 200 else -1)

    clients = [threading.Thread(target=client, args=(100 * n,), daemon=True) for n in range(8)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(60)
    stuck = sum(thread.is_alive() for thread in clients)
    (server.base / "open").touch()
    assert stuck == 0, f"{stuck} clients waited for the worker held at the gate"
    assert sorted(answered) == sorted(v for n in range(8) for v in range(100 * n, 100 * n + 25))
    assert gated().json()["gated"] is True


def test_retiring_workers_hand_over_their_connections_without_a_502(serve, tmp_path):
    server = _connection_app(serve, tmp_path, SMSUPER_MAX_REQUESTS="7")
    statuses: List[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(30):
            try:
                status = server.post("body", "text/plain").status_code
            except requests.RequestException:
                status = 0
            with lock:
                statuses.append(status)

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(120)
    # 120 requests through workers that retire every ~7: each retiring worker still held
    # kept connections, and not one request met a closed connection.
    assert statuses == [200] * 120, {s: statuses.count(s) for s in set(statuses)}
    assert server.stderr().count("Autorestarting worker") >= 10
    assert server.terminate() == 0
