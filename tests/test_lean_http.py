"""The lean request reader and response writer (smsuper/serve/worker/lean_http.py) say
exactly what gunicorn's parser, wsgi.create and Response say, for every request they take.

A user's own WSGI app (style B) sees the environ gunicorn built before; nginx and the client
see the same bytes of every answer. Checked on the pyz's own gunicorn, in a process of its
own, for requests of nginx's shape and for the ones the reader must leave to gunicorn.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = r"""
import io, json, socket, sys
sys.path.insert(0, sys.argv[1])
from gunicorn import http, util
from gunicorn.config import Config
from gunicorn.http import wsgi
from smsuper.serve.worker import lean_http

cfg = Config()
for key, value in {"limit_request_line": 0, "limit_request_fields": 32768, "limit_request_field_size": 0,
                   "secure_scheme_headers": {}}.items():
    cfg.set(key, value)
util.http_date = lambda timestamp=None: "Wed, 02 Dec 2026 03:00:00 GMT"


class Listener:
    def getsockname(self):
        return "/run/smsuper/shared/gunicorn.sock"


def gunicorn_view(raw):
    a, b = socket.socketpair()
    a.sendall(raw)
    a.shutdown(socket.SHUT_WR)
    req = next(http.RequestParser(cfg, b, ""))
    _, environ = wsgi.create(req, b, "", Listener().getsockname(), cfg)
    return req, environ, environ["wsgi.input"].read()


def lean_view(raw):
    reader = lean_http.Reader(raw)
    buf, end = reader.read_head(None)
    req = lean_http.parse_head(buf[:end], 32768, 0)
    if req is None:
        return None
    body = reader.read_body(None, buf, end, req.content_length)
    environ = lean_http.Environ(cfg).create(req, body, None, "", Listener())
    return req, environ, environ["wsgi.input"].read()


def plain(environ):
    return {key: value for key, value in environ.items() if isinstance(value, (str, bool, tuple))}


def request_view(req):
    return [req.method, req.uri, req.path, req.query, req.fragment, list(req.version), req.headers,
            req.should_close()]


results = {"same": [], "different": [], "passed_on": [], "taken": []}
for raw in json.loads(sys.argv[2]):
    raw = raw.encode("latin-1")
    lean = lean_view(raw)
    if lean is None:
        results["passed_on"].append(raw.decode("latin-1"))
        continue
    theirs = gunicorn_view(raw)
    mine = (request_view(lean[0]), plain(lean[1]), lean[2].decode("latin-1"))
    reference = (request_view(theirs[0]), plain(theirs[1]), theirs[2].decode("latin-1"))
    results["same" if mine == reference else "different"].append([raw.decode("latin-1"), mine, reference])
    results["taken"].append(raw.decode("latin-1"))


def answer(response_class, method, version, calls):
    a, b = socket.socketpair()
    raw = f"{method} /invocations HTTP/{version}\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    a.sendall(raw)
    req = next(http.RequestParser(cfg, b, ""))
    resp = response_class(req, b, cfg)
    sent = []
    for call, argument in calls:
        if call == "start":
            resp.start_response(argument[0], [tuple(h) for h in argument[1]])
        elif call == "write":
            resp.write(argument.encode())
        elif call == "close":
            resp.close()
        sent.append(resp.headers_sent)
    b.close()
    out = b""
    while True:
        data = a.recv(65536)
        if not data:
            break
        out += data
    return [out.decode("latin-1"), resp.should_close(), resp.sent, sent[-1]]


answers = {"same": [], "different": []}
for method, version, calls in json.loads(sys.argv[3]):
    mine = answer(lean_http.Response, method, version, calls)
    reference = answer(wsgi.Response, method, version, calls)
    answers["same" if mine == reference else "different"].append([method, version, calls, mine, reference])
results["answers"] = answers
print(json.dumps(results))
"""

NGINX_SHAPED = [
    "POST /invocations HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 127.0.0.1\r\nContent-Length: 17\r\n"
    "Content-Type: application/json\r\nAccept: application/json\r\n\r\n[[1.0, 2.0, 3.0]]",
    "GET /execution-parameters HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "POST /invocations?a=1&b=%20#frag HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 3\r\n\r\nabc",
    "POST /caf%C3%A9/a:b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-A:3\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nContent-Type: text/csv\r\nContent-Type: application/json\r\nHost: a\r\nHost: b\r\n"
    "Content-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nX-Spaces: \t value with  spaces \t \r\nX-Empty:\r\nContent-Length: 1\r\n\r\nz",
    "POST /invocations HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nConnection: upgrade, close\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nContent-Length: 0\r\nX-Latin: caf\xe9\r\n\r\n",
    "DELETE /models/m1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcdeGET /next HTTP/1.1\r\n\r\n",
]
FOR_GUNICORN = [
    "POST /invocations HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\na",
    "GET /invocations-bidirectional-stream HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nX_Under: 1\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nX-A: 1\rX-B: 2\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",
    "post /invocations HTTP/1.1\r\n\r\n",
    "POST //invocations HTTP/1.1\r\n\r\n",
    "POST http://host/invocations HTTP/1.1\r\n\r\n",
    "POST /invocations HTTP/2.0\r\n\r\n",
    "POST /invocations  HTTP/1.1\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
    "POST /invocations HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
    "POST /invocations HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nBad Name: 1\r\n\r\n",
    "POST /invocations HTTP/1.1\r\n: empty name\r\n\r\n",
    "POST /invocations HTTP/1.1\r\nNo colon\r\n\r\n",
    "POST /" + "x" * 9000 + " HTTP/1.1\r\n\r\n",
    "POST /in\x7fvocations HTTP/1.1\r\n\r\n",
]
ANSWERS = [
    ["POST", "1.1", [["start", ["200 OK", [["Content-Type", "application/json"], ["Content-Length", "2"]]]],
                     ["write", "{}"], ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["Content-Length", "5"]]]], ["write", "abc"], ["write", "defgh"],
                     ["write", "x"], ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["Content-Type", "text/plain"]]]], ["write", ""], ["write", "chunk1"],
                     ["write", ""], ["write", "chunk two"], ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["X-A", "1"]]]], ["close", None]]],
    ["POST", "1.0", [["start", ["200 OK", [["X-A", "1"]]]], ["write", "no length"], ["close", None]]],
    ["HEAD", "1.1", [["start", ["200 OK", [["Content-Type", "text/plain"]]]], ["close", None]]],
    ["POST", "1.1", [["start", ["204 No Content", []]], ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["Connection", "close"], ["Content-Length", "1"]]]], ["write", "a"],
                     ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["Content-Length", "0"]]]], ["write", ""], ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["Content-Length", "3"]]]]]],
] + 2 * [  # twice: the second time with what each name means remembered
    ["GET", "1.1", [["start", ["101 Switching Protocols", [["Connection", "Upgrade"], ["Upgrade", "websocket"],
                                                           ["Keep-Alive", "timeout=5"], ["X-A", " padded\t"]]]],
                    ["close", None]]],
    ["POST", "1.1", [["start", ["200 OK", [["Connection", "close"], ["Content-Length", "1"]]]], ["write", "a"],
                     ["close", None]]],
]


def _run(pyz) -> dict:
    ran = subprocess.run([sys.executable, "-c", CHECK, str(pyz), json.dumps(NGINX_SHAPED + FOR_GUNICORN),
                          json.dumps(ANSWERS)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_every_request_of_nginx_shape_gets_gunicorns_environ_and_request(pyz):
    found = _run(pyz)
    assert found["different"] == []
    assert sorted(found["taken"]) == sorted(NGINX_SHAPED)


def test_every_other_request_is_left_to_gunicorns_parser(pyz):
    assert sorted(_run(pyz)["passed_on"]) == sorted(FOR_GUNICORN)


def test_every_answer_goes_out_byte_for_byte_as_gunicorn_writes_it(pyz):
    answers = _run(pyz)["answers"]
    assert answers["different"] == []
    assert len(answers["same"]) == len(ANSWERS)
