"""Bad requests at the HTTP level, as a client sends them: every error is the short JSON body
docs/serving.md promises, and the metrics count what the client got.

Requests are written byte for byte over a socket to the built pyz serving as PID 1 of its own
PID namespace (real nginx, real gunicorn), because most of these cannot be sent with an HTTP
library: a TRACE, a request line of 9 KiB, 200 headers, HTTP/3.0, a request line that is not
HTTP at all. Counts reach the scrape through nginx's access log, up to a second late: every
wait is for a condition, with a generous deadline.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import requests

from helpers import (WAIT_LIMIT, background, client_for, eventually, host_pid, in_flight, serving_with_metrics,
                     train_command, train_environment, train_layout, wait_counted)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


class Answer:
    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        parts = self.status_line.split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/"), f"not an HTTP answer: {raw[:300]!r}"
        self.status = int(parts[1])
        self.headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, _, field = line.partition(":")
            self.headers[name.strip().lower()] = field.strip()

    def error(self) -> str:
        """The message of a short JSON error body, checked to be one."""
        assert self.headers.get("content-type") == "application/json", (self.status_line, self.headers, self.body)
        document = json.loads(self.body)
        assert list(document) == ["error"] and isinstance(document["error"], str) and document["error"], document
        assert len(self.body) < 1024, self.body  # short: the platform passes it on inside its ModelError
        return document["error"]


def exchange(port: int, request: bytes) -> Answer:
    """Send `request` as it is and read the answer until nginx closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_LIMIT) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return Answer(b"".join(chunks))


def request(method: str, path: str, *headers: str, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: localhost", "Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---- every error nginx makes itself is JSON, and counted with its route ------------------------------

PAYLOAD_MB = 1
FAULTS = [
    # (what, raw request, status, route label, Allow header or None, a word the message must hold)
    ("TRACE", request("TRACE", "/invocations"), 405, "/invocations", "POST", "TRACE"),
    ("OPTIONS /invocations", request("OPTIONS", "/invocations"), 405, "/invocations", "POST", "OPTIONS"),
    ("GET /invocations", request("GET", "/invocations"), 405, "/invocations", "POST", "GET"),
    ("OPTIONS /execution-parameters", request("OPTIONS", "/execution-parameters"), 405, "/execution-parameters",
     "GET, HEAD", "OPTIONS"),
    ("POST /ping", request("POST", "/ping", body=b"{}"), 405, "/ping", "GET, HEAD", "POST"),
    ("DELETE /ping", request("DELETE", "/ping"), 405, "/ping", "GET, HEAD", "DELETE"),
    ("OPTIONS /ping", request("OPTIONS", "/ping"), 405, "/ping", "GET, HEAD", "OPTIONS"),
    ("TRACE on an unknown route", request("TRACE", "/models"), 404, "other", None, "route"),
    ("a URI of 9 KiB", request("GET", "/invocations?q=" + "x" * 9000), 414, "other", None, "URI"),
    ("40 KiB of headers", request("POST", "/invocations", *[f"X-Big-{n}: {'v' * 8000}" for n in range(5)],
                                  body=b"[1]"), 431, "/invocations", None, "header"),
    ("a header line of 8190 bytes", request("POST", "/invocations", "X-Long: " + "v" * 8182, body=b"[1]"), 431,
     "/invocations", None, "header line"),
    ("HTTP/3.0", request("GET", "/ping", version="HTTP/3.0"), 505, "other", None, "HTTP/1.1"),
    ("not HTTP at all", b"HELLO THERE\r\n\r\n", 400, "other", None, "malformed"),
    ("HTTP/1.1 without Host", b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "/ping", None, "Host"),
    ("Transfer-Encoding: gzip", request("POST", "/invocations", "Transfer-Encoding: gzip", body=b"[1]"), 501,
     "/invocations", None, "chunked"),
    ("an internal location", request("GET", "/_smsuper/ping-status"), 404, "other", None, "route"),
    ("an unknown route", request("GET", "/models"), 404, "other", None, "route"),
    ("a body over SAGEMAKER_MAX_PAYLOAD_IN_MB", request("POST", "/invocations", "Content-Type: application/json",
                                                        f"Content-Length: {PAYLOAD_MB * MIB + 1}"),
     413, "/invocations", None, "SAGEMAKER_MAX_PAYLOAD_IN_MB=1"),
]


@pytest.mark.slow
def test_every_error_nginx_makes_is_short_json_and_counted_by_route_and_code(serve):
    server, metrics_port = serving_with_metrics(serve, SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB))
    expected: Dict[Tuple[str, str], int] = collections.Counter()
    for what, raw, status, route, allow, word in FAULTS:
        answer = exchange(server.port, raw)
        assert answer.status == status, (what, answer.status_line, answer.body)
        message = answer.error()
        assert word in message, (what, message)
        if allow is not None:
            assert answer.headers.get("allow") == allow, (what, answer.headers)
        expected[(route, str(status))] += 1

    # What nginx passes on is served, however many headers (gunicorn's own limits are out of reach).
    many_headers = exchange(server.port, request("POST", "/invocations", "Content-Type: application/json",
                                                 *[f"X-Header-{n}: {n}" for n in range(200)], body=b"[1]"))
    assert many_headers.status == 200 and json.loads(many_headers.body) == [1], many_headers.body
    # The longest lines nginx takes (8188 bytes and the line end) reach the model.
    long_header = exchange(server.port, request("POST", "/invocations", "Content-Type: application/json",
                                                "X-Long: " + "v" * 8180, body=b"[2]"))
    assert long_header.status == 200 and json.loads(long_header.body) == [2], long_header.body
    line = "POST /invocations?q=" + "x" * 8159 + " HTTP/1.1"
    assert len(line) == 8188
    long_uri = exchange(server.port, request("POST", "/invocations?q=" + "x" * 8159,
                                             "Content-Type: application/json", body=b"[3]"))
    assert long_uri.status == 200 and json.loads(long_uri.body) == [3], long_uri.body
    contradictory = exchange(server.port, request("POST", "/invocations", "Content-Type: application/json",
                                                  "X-Forwarded-Proto: https", "X-Forwarded-Ssl: off", body=b"[4]"))
    assert contradictory.status == 200 and json.loads(contradictory.body) == [4], contradictory.body
    expected[("/invocations", "200")] += 4

    # A worker killed mid-request: nginx's 502, counted though no worker lived to count it.
    doomed = background(lambda: server.post({"gate": True}))
    eventually(lambda: in_flight(server.base) == 1, "the request to reach a worker")
    victim = host_pid(int(os.listdir(server.base / "inflight")[0].split("-")[0]), server.init_pid())
    os.kill(victim, signal.SIGKILL)
    died = doomed()
    assert died.status_code == 502 and died.headers["Content-Type"] == "application/json"
    assert "worker died" in died.json()["error"]
    (server.base / "open").touch()
    expected[("/invocations", "502")] += 1

    counts = wait_counted(metrics_port, expected)
    for key, number in expected.items():
        assert counts.get(key) == number, (key, counts)  # exactly once: not again by a worker
    assert counts.get(("/ping", "200"), 0) >= 1  # the readiness pings are what nginx answered too
    assert server.terminate() == 0
    # The access log still shows every request but the pings.
    logged = server.stdout()
    assert '"TRACE /invocations HTTP/1.1" 405' in logged and '"HELLO THERE" 400' in logged
    assert '"GET /ping HTTP/1.1" 200' not in logged


@pytest.mark.slow
def test_a_model_slower_than_the_timeout_gets_504_counted(serve):
    server, metrics_port = serving_with_metrics(serve, SAGEMAKER_MODEL_SERVER_TIMEOUT="1")
    slow = server.post({"sleep": 30})
    assert slow.status_code == 504 and slow.headers["Content-Type"] == "application/json"
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT=1" in slow.json()["error"]
    counts = wait_counted(metrics_port, {("/invocations", "504"): 1})
    assert counts[("/invocations", "504")] == 1
    assert ("/invocations", "200") not in counts  # the worker never answered it
    assert server.terminate() == 0


@pytest.mark.slow
def test_without_nginx_the_workers_count_and_refuse_wrong_methods_in_json(serve):
    server, metrics_port = serving_with_metrics(serve, SMSUPER_NGINX="/nonexistent/nginx")
    assert server.post([1]).status_code == 200
    options = requests.options(server.url("/invocations"), timeout=WAIT_LIMIT)
    assert options.status_code == 405 and options.headers["Allow"] == "POST"
    assert options.headers["Content-Type"] == "application/json" and "OPTIONS" in options.json()["error"]
    ping = requests.post(server.url("/ping"), timeout=WAIT_LIMIT)
    assert ping.status_code == 405 and ping.headers["Allow"] == "GET, HEAD"
    counts = wait_counted(metrics_port, {("/invocations", "200"): 1, ("/invocations", "405"): 1,
                                         ("/ping", "405"): 1})
    assert counts[("/invocations", "200")] == 1 and counts[("/invocations", "405")] == 1
    assert server.terminate() == 0


# ---- the log at debug level: an object-valued hyperparameter ----------------------------------------

ARGV_SCRIPT = r"""
import json, os, sys
with open(os.path.join(os.environ["SM_MODEL_DIR"], "seen.json"), "w") as handle:
    json.dump({"argv": sys.argv[1:], "user_args": json.loads(os.environ["SM_USER_ARGS"])}, handle)
"""


def test_an_object_valued_hyperparameter_keeps_its_password_out_of_the_debug_log(pyz, base_env, tmp_path):
    secret = "hunter2-in-an-object"
    hyperparameters = {"db": json.dumps({"login": "bob", "password": secret}), "epochs": "3"}
    base = train_layout(tmp_path / "ml", ARGV_SCRIPT, hyperparameters=hyperparameters)
    env = train_environment(base_env, base, SAGEMAKER_PROGRAM="train.py", SMSUPER_LOG_LEVEL="debug")
    done = subprocess.run(train_command(pyz), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=WAIT_LIMIT)
    assert done.returncode == 0, done.stderr
    logged = done.stdout + done.stderr
    assert "SM_USER_ARGS=" in logged  # the environment was printed
    assert secret not in logged, [line for line in logged.splitlines() if secret in line]
    assert "login=bob,password=****" in logged  # the argv and SM_USER_ARGS, masked
    # Masking is for the log only: the script gets the value unchanged.
    seen = json.loads((base / "model" / "seen.json").read_text())
    assert seen["argv"] == ["--db", f"login=bob,password={secret}", "--epochs", "3"]
    assert seen["user_args"] == seen["argv"]


# ---- the Flask app alone (gunicorn faces clients without nginx) -----------------------------------------

def test_the_app_refuses_a_wrong_method_with_allow_and_json(tmp_path):
    sys.path.insert(0, str(ROOT))

    client = client_for(tmp_path)
    for method, path, allow in [("OPTIONS", "/invocations", "POST"), ("OPTIONS", "/ping", "GET, HEAD"),
                                ("POST", "/ping", "GET, HEAD"), ("OPTIONS", "/execution-parameters", "GET, HEAD"),
                                ("GET", "/invocations", "POST")]:
        response = client.open(path, method=method)
        assert response.status_code == 405, (method, path, response.data)
        assert response.headers["Allow"] == allow, (method, path, response.headers)
        assert response.headers["Content-Type"] == "application/json"
        message = json.loads(response.data)["error"]
        assert method in message and allow in message, message
