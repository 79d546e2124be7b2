"""The metrics endpoint: a tiny HTTP/1.1 server running inside PID 1's loop.

PID 1 must stay single-threaded (spawn runs Python between fork and exec),
so there is no http.server thread: the listening socket and each connection
are non-blocking and registered with the supervisor's selector. A
connection is read until the end of its request head, answered, and closed
(`Connection: close`: Prometheus reconnects each scrape, which costs it
nothing and keeps this side stateless). Idle or slow clients are dropped
after IDLE_TIMEOUT, and at most MAX_CONNECTIONS are open at once, so a
misbehaving client can neither hold PID 1's memory nor its loop. Nothing
runs while nobody scrapes: no timer, no polling.
"""

from __future__ import annotations

import socket

from .. import log
from ..init.loop_connection import LoopConnection, LoopServer
from .exposition import CONTENT_TYPE

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable

MAX_REQUEST_HEAD = 8192
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 10.0
PATH = "/metrics"


def listen(port: int) -> socket.socket:
    """A non-blocking listening socket on every address, IPv6 and IPv4 when the host has both."""
    try:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("::", port))
        except OSError:
            listener.close()
            raise
    except OSError:  # no IPv6 in this container
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("0.0.0.0", port))
        except OSError:
            listener.close()
            raise
    listener.listen(64)
    listener.setblocking(False)
    return listener


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
              head_only: bool = False, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


class MetricsServer(LoopServer):
    """Serves `render()` at /metrics on `port`; `loop` is the Supervisor (add_reader, add_writer, call_later)."""

    def __init__(self, loop, port: int, render: Callable[[], bytes]):
        self.render = render
        super().__init__(loop, listen(port), MAX_CONNECTIONS, "metrics endpoint", chore=True)
        self.port = self.listener.getsockname()[1]

    def connect(self, sock: socket.socket) -> "_Connection":
        return _Connection(self, sock)

    def answer(self, head: bytes) -> bytes:
        """The whole response to one request head."""
        words = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].decode("latin-1").split()
        if len(words) < 2:
            return _response("400 Bad Request", b"bad request\n")
        method, path = words[0], words[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET or HEAD only\n", extra="Allow: GET, HEAD\r\n")
        if path != PATH:
            return _response("404 Not Found", f"the metrics are at {PATH}\n".encode())
        try:
            body = self.render()
        except Exception as error:  # a bug in a collector must not take PID 1 down
            log.warning(f"metrics endpoint: rendering failed: {type(error).__name__}: {error}")
            return _response("500 Internal Server Error", b"rendering the metrics failed\n")
        return _response("200 OK", body, CONTENT_TYPE, head_only=method == "HEAD")


class _Connection(LoopConnection):
    def __init__(self, server: MetricsServer, sock: socket.socket):
        self.server = server
        super().__init__(server.loop, sock, IDLE_TIMEOUT, server.forget, chore=True)

    def _readable(self) -> None:
        data = self._receive(4096)
        if not data:
            return
        self.received += data
        end = self.received.find(b"\r\n\r\n")
        if end < 0:
            end = self.received.find(b"\n\n")
        if end < 0:
            if len(self.received) > MAX_REQUEST_HEAD:
                self.send(_response("431 Request Header Fields Too Large", b"request head too large\n"))
            return
        self.send(self.server.answer(self.received[:end]))

