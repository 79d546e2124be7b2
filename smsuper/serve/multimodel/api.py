"""The management side of a multi-model endpoint: HTTP/1.1 on a unix socket, inside PID 1's loop.

nginx proxies `/models` and `/models/NAME` here (nginx_routes.py); nothing else
can reach the socket but the workload's own user, and everything that
arrives is treated as hostile: the head is at most 8 KiB, the body at most
64 KiB and announced by Content-Length (nginx always sends one), a request
must arrive within REQUEST_TIMEOUT, and at most MAX_CONNECTIONS are open.
A load or an unload answers later (manager.py); the connection simply waits,
so PID 1's loop never does. Every answer is JSON and closes the connection.

  POST   /models           {"model_name": NAME, "url": PATH}   200, 400, 409, 500, 507
  GET    /models?limit=N&next_page_token=T                     200, 400
  GET    /models/NAME                                          200, 404
  DELETE /models/NAME                                          200, 404, 409
"""

from __future__ import annotations

import json
import os
import socket
from urllib.parse import parse_qs, unquote

from ... import log
from ...init.loop_connection import LoopConnection, LoopServer
from . import names
from .manager import MAX_PAGE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional

MAX_HEAD = 8192
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 256
REQUEST_TIMEOUT = 30.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           411: "Length Required", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable", 507: "Insufficient Storage"}


def listen(path: str, owner) -> socket.socket:
    try:
        os.unlink(path)  # PID 1's own directory: a socket of an earlier run
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)  # nginx's user connects; nobody else may
    os.chmod(path, 0o600)
    listener.listen(128)
    listener.setblocking(False)
    return listener


class ManagementServer(LoopServer):
    def __init__(self, loop, path: str, owner, manager):
        self.manager = manager
        super().__init__(loop, listen(path, owner), MAX_CONNECTIONS, "management API")

    def connect(self, sock: socket.socket) -> "_Connection":
        return _Connection(self, sock)

    def handle(self, method: str, target: str, headers: Dict[str, str], body: bytes, respond) -> None:
        path, _, query = target.partition("?")
        if path == "/models":
            if method == "POST":
                self._load(headers, body, respond)
            elif method == "GET":
                respond(*self._listing(query))
            else:
                respond(405, {"error": f"method {method} is not allowed on /models: use GET or POST"})
            return
        prefix = "/models/"
        name = unquote(path[len(prefix):]) if path.startswith(prefix) else ""
        if not names.valid(name):
            respond(404, {"error": f"no such route: model names are {names.RULE}"})
        elif method == "GET":
            respond(*self.manager.describe(name))
        elif method == "DELETE":
            self.manager.unload(name, respond)
        else:
            respond(405, {"error": f"method {method} is not allowed on /models/{name}: use GET or DELETE"})

    def _load(self, headers: Dict[str, str], body: bytes, respond) -> None:
        try:
            request = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            respond(400, {"error": 'the body must be JSON: {"model_name": NAME, "url": PATH}'})
            return
        if not isinstance(request, dict):
            respond(400, {"error": 'the body must be a JSON object: {"model_name": NAME, "url": PATH}'})
            return
        target = headers.get("x-amzn-sagemaker-target-model", "")[:1024]
        self.manager.load(request.get("model_name"), request.get("url"), target, respond)

    def _listing(self, query: str):
        fields = parse_qs(query, keep_blank_values=True)
        raw_limit = (fields.get("limit") or [str(MAX_PAGE)])[0]
        token = (fields.get("next_page_token") or [""])[0]
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            return 400, {"error": f"limit must be an integer from 1 to {MAX_PAGE}"}
        if token and not names.valid(token):
            return 400, {"error": "next_page_token must be a token from an earlier page (nextPageToken)"}
        return self.manager.listing(min(int(raw_limit), MAX_PAGE), token)


class _Connection(LoopConnection):
    def __init__(self, server: ManagementServer, sock: socket.socket):
        self.server = server
        self.head: Optional[tuple] = None  # (method, target, headers, body length)
        self.answered = False
        super().__init__(server.loop, sock, REQUEST_TIMEOUT, server.forget)

    def _timed_out(self) -> None:
        if self.head is None or len(self.received) < self.head[3]:
            self.close()

    def _readable(self) -> None:
        data = self._receive(65536)
        if not data:
            return  # gone before its answer (closed): a pending load goes on, its answer is dropped
        self.received += data
        if self.head is None and not self._parse_head():
            return
        if self.head is not None and len(self.received) >= self.head[3]:
            method, target, headers, length = self.head
            self.server.loop.remove_reader(self.fd)
            self.timer.cancel()
            try:
                self.server.handle(method, target, headers, self.received[:length], self.respond)
            except Exception as error:  # a bug here must cost one answer, never PID 1's loop
                log.error(f"management API: {method} {target[:200]} failed: {type(error).__name__}: {error}")
                self.respond(500, {"error": f"internal error: {type(error).__name__}"})

    def _parse_head(self) -> bool:
        end = self.received.find(b"\r\n\r\n")
        if end < 0:
            if len(self.received) > MAX_HEAD:
                self._refuse(431, "request head too large")
            return False
        lines = self.received[:end].decode("latin-1").split("\r\n")
        words = lines[0].split()
        if len(words) != 3:
            self._refuse(400, "malformed request line")
            return False
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._refuse(411, "send the body with a Content-Length")
            return False
        raw = headers.get("content-length", "0")
        if not raw.isdigit():
            self._refuse(400, "bad Content-Length")
            return False
        if int(raw) > MAX_BODY:
            self._refuse(413, f"a management request's body may hold at most {MAX_BODY} bytes")
            return False
        self.received = self.received[end + 4:]
        self.head = (words[0], words[1], headers, int(raw))
        return True

    def _refuse(self, status: int, message: str) -> None:
        self.respond(status, {"error": message})

    def respond(self, status: int, body: dict) -> None:
        if self.answered or self.closed:
            return
        self.answered = True
        payload = json.dumps(body).encode("utf-8")
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        self.send(head.encode("latin-1") + payload)
