"""A listener and its client connections served inside PID 1's loop (init/supervisor.py),
never blocking it.

PID 1 answers two small HTTP endpoints itself: the metrics (metrics/server.py) and a
multi-model endpoint's management API (serve/multimodel/api.py). Both read a request as it
arrives, answer it in one piece and close. What they share lives here: a non-blocking
socket watched by the loop, a deadline, the answer written as far as the socket takes it
(the rest when the loop says it is writable), and a close that leaves nothing registered.
A subclass reads (`_readable`) and decides what a deadline means (`_timed_out`); a
LoopServer accepts while it has room and makes one connection per client (`connect`).
"""

from __future__ import annotations

import socket

from .. import log

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Dict, Optional


class LoopServer:
    def __init__(self, loop, listener: socket.socket, max_connections: int, what: str, chore: bool = False):
        """`what` names the endpoint in log lines; `chore` as for LoopConnection."""
        self.loop = loop
        self.listener = listener
        self.max_connections = max_connections
        self.what = what
        self.connections: Dict[int, LoopConnection] = {}
        loop.add_reader(listener.fileno(), self._accept, chore=chore)

    def connect(self, sock: socket.socket) -> "LoopConnection":
        raise NotImplementedError

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE and the like: try again on the next wake-up
                log.debug(f"{self.what}: accept failed: {error}")
                return
            if len(self.connections) >= self.max_connections:
                sock.close()
                continue
            connection = self.connect(sock)
            self.connections[connection.fd] = connection

    def forget(self, connection: "LoopConnection") -> None:
        self.connections.pop(connection.fd, None)


class LoopConnection:
    def __init__(self, loop, sock: socket.socket, timeout: float, forget: Callable[["LoopConnection"], None],
                 chore: bool = False):
        """`chore`: the connection is not what the job exists for (metrics): a bug in it only warns."""
        sock.setblocking(False)
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.chore = chore
        self.received = b""
        self.outgoing = memoryview(b"")
        self.writing = False
        self.closed = False
        self._forget = forget
        loop.add_reader(self.fd, self._readable, chore=chore)
        self.timer = loop.call_later(timeout, self._timed_out, chore=chore)

    def _readable(self) -> None:
        raise NotImplementedError

    def _timed_out(self) -> None:
        self.close()

    def _receive(self, size: int) -> Optional[bytes]:
        """What the client sent; b"" once it is gone (then the connection is closed already),
        None when nothing is there yet."""
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:
            self.close()
        return data

    def send(self, answer: bytes) -> None:
        """Write the whole answer, then close. Whatever else the client sends is not read."""
        self.loop.remove_reader(self.fd)
        self.outgoing = memoryview(answer)
        self._writable()

    def _writable(self) -> None:
        try:
            sent = self.sock.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        self.outgoing = self.outgoing[sent:]
        if not self.outgoing:
            self.close()
        elif not self.writing:
            self.writing = True
            self.loop.add_writer(self.fd, self._writable, chore=self.chore)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.timer.cancel()
        self.loop.remove_reader(self.fd)  # removes a writer watch as well
        self._forget(self)
        try:
            self.sock.close()
        except OSError:
            pass
