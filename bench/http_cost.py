"""CPU per request of a keep-alive worker's HTTP layer alone: gunicorn's parser, wsgi.create and
Response against smsuper's lean reader and writer (smsuper/serve/worker/lean_http.py).

One process, a socket pair, the request nginx sends for the trivial model and its answer; no
app, no nginx. Each way is run 5 x 20000 times and the best CPU time (process_time) per request
is printed, beside the system calls alone (a send and a receive each way). The figure depends
little on other load, unlike req/s, and tells the HTTP layer's share of figure 1's worker CPU.

    python3 bench/http_cost.py [--pyz dist/smsuper.pyz]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST = (b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 127.0.0.1\r\n"
           b"Content-Length: 17\r\nContent-Type: application/json\r\nAccept: application/json\r\n\r\n"
           b"[[1.0, 2.0, 3.0]]")
ANSWER_HEADERS = [("Content-Type", "application/json"), ("Content-Length", "17")]
ANSWER = b"[[1.0, 2.0, 3.0]]"
SOCKET_NAME = "/run/smsuper/shared/gunicorn.sock"


class _Listener:
    """What the worker asks of its listener: its name (a unix socket's path)."""

    def getsockname(self) -> str:
        return SOCKET_NAME


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyz", type=Path, default=ROOT / "dist" / "smsuper.pyz",
                        help="the pyz whose gunicorn and lean_http to measure (default: dist/smsuper.pyz)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.pyz))
    from gunicorn import http, util
    from gunicorn.config import Config
    from gunicorn.http import wsgi
    from smsuper.serve.master.gunicorn_app import BEHIND_NGINX
    from smsuper.serve.worker import keepalive_worker, lean_http

    cfg = Config()
    for key, value in BEHIND_NGINX.items():
        cfg.set(key, value)
    util.http_date = keepalive_worker._DateHeader(util.http_date)  # as the worker runs it
    client, worker = socket.socketpair()
    listener = _Listener()

    def syscalls_only() -> None:
        client.sendall(REQUEST)
        worker.recv(65536)
        worker.sendall(b"x" * 200)
        client.recv(65536)

    def gunicorn_way() -> None:
        client.sendall(REQUEST)
        req = next(http.RequestParser(cfg, worker, ""))
        resp, environ = wsgi.create(req, worker, "", listener.getsockname(), cfg)
        environ["wsgi.input"].read()
        resp.start_response("200 OK", ANSWER_HEADERS)
        resp.write(ANSWER)
        resp.close()
        client.recv(65536)

    environ_maker = lean_http.Environ(cfg)
    reader = lean_http.Reader()

    def lean_way() -> None:
        client.sendall(REQUEST)
        buf, end = reader.read_head(worker)
        req = lean_http.parse_head(buf[:end], 32768, 0)
        body = reader.read_body(worker, buf, end, req.content_length)
        environ = environ_maker.create(req, body, worker, "", listener)
        environ["wsgi.input"].read()
        resp = lean_http.Response(req, worker, cfg)
        resp.start_response("200 OK", ANSWER_HEADERS)
        resp.write(ANSWER)
        resp.close()
        client.recv(65536)

    for name, way in (("system calls alone", syscalls_only), ("gunicorn's parser", gunicorn_way),
                      ("lean_http", lean_way)):
        for _ in range(2000):
            way()
        best = float("inf")
        for _ in range(5):
            began = time.process_time()
            for _ in range(20000):
                way()
            best = min(best, (time.process_time() - began) / 20000 * 1e6)
        print(f"{name:20} {best:6.1f} µs CPU per request (best of 5 x 20000)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
