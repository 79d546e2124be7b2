"""Bidirectional streams: one WebSocket (RFC 6455) per connection, served beside the requests.

The platform's InvokeEndpointWithBidirectionalStream reaches the container as a WebSocket
on the route table's upgraded row (routes.UPGRADED, /invocations-bidirectional-stream).
A sync worker answers one request at a time in its main thread and a stream may last for
hours, so the worker does not serve a stream itself: when the request it has just read is
such an upgrade and the handler module has a stream_fn, it hands the connection to this
module (StreamServer.take) and goes back to its requests. /ping (nginx's) and /invocations
never wait for a stream. Each stream has two threads of its own:

  the handler   runs stream_fn(model, messages, context) and sends each item it yields
                as one message of its kind (str: a text frame, bytes: a binary frame).
                When stream_fn asks for the next message and none is waiting, this
                thread reads the socket itself (answering pings, reassembling
                fragments): a message reaches stream_fn without a hand-over between
                threads, which would cost more than wsproto's own work on it.
  the watcher   looks once every WATCH_INTERVAL whether stream_fn is away (computing,
                sending) and the socket has something: then it reads it, answers pings,
                notices a Close or a broken connection, and keeps up to QUEUED
                messages for stream_fn; beyond that, TCP's flow control stops the client.

How a stream ends, and the close code the client gets:

  stream_fn returns                      1000
  stream_fn raises CloseStream(code, r)  code, r
  stream_fn raises anything else         1011, "stream_fn raised TYPE: message" (traceback logged)
  stream_fn yields neither str nor bytes 1011, saying so
  a message larger than the body limit   1009 (SAGEMAKER_MAX_PAYLOAD_IN_MB)
  the client closes                      its own code echoed; `messages` ends, and what
                                         stream_fn yields after that is dropped
  the client breaks the protocol         wsproto's code (1002, 1007 for text that is not UTF-8)
  the server stops (SIGTERM, a reload)   `messages` ends (after the messages already
                                         received), stream_fn finishes, then 1001; one still
                                         running at the stop deadline gets 1001 anyway

At most SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER streams per worker: one more is refused
before the handshake with a JSON 503 (Retry-After: 1).

The protocol is wsproto's: pure Python and sans-I/O (it holds no socket and starts no thread),
so gunicorn's own socket and these two threads are all there is, and it runs on every Python
the pyz supports. Extensions (permessage-deflate) are not negotiated: clients fall back to
plain frames, and the bytes a handler sees are the bytes that crossed the wire.
"""

from __future__ import annotations

import select
import socket
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Set

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Request as Handshake,
                            TextMessage)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ... import log
from ..routes import error_body
from .errors import CloseStream
from .seam import Request

QUEUED = 16  # whole messages the watch thread keeps for a busy stream_fn, per stream
WATCH_INTERVAL = 1.0  # seconds between the watch thread's looks while stream_fn computes
CLOSE_WAIT = 5.0  # seconds to wait for the client's Close after ours, before the socket is closed
READ_SIZE = 65536
_REASON_BYTES = 123  # a Close frame's reason: 125 bytes of payload less the code

NORMAL, GOING_AWAY, TOO_BIG, INTERNAL_ERROR = 1000, 1001, 1009, 1011


def _reason(text: str) -> str:
    """`text` cut to what a Close frame can carry, on a character boundary."""
    data = text.encode("utf-8")[:_REASON_BYTES]
    return data.decode("utf-8", "ignore")


def _http_error(status: str, message: str, extra: str = "") -> bytes:
    body = error_body(message)
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode("latin-1") + body


def _environ(req: Any) -> Dict[str, str]:
    """A WSGI-like environ of gunicorn's parsed request, for the handler's context."""
    environ = {"REQUEST_METHOD": req.method, "PATH_INFO": req.path, "QUERY_STRING": req.query or "",
               "RAW_URI": req.uri, "SERVER_PROTOCOL": "HTTP/%d.%d" % req.version}
    for name, value in req.headers:
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


class Messages:
    """The incoming messages of one stream, as stream_fn iterates them: those received, then
    the end once the client closed, the connection broke, or the server is stopping. Asking
    for the next one reads the socket in stream_fn's own thread when none is waiting."""

    def __init__(self, stream: "Stream") -> None:
        self.stream = stream

    def __iter__(self) -> "Messages":
        return self

    def __next__(self) -> Any:
        return self.stream.next_message()


class Stream:
    """One WebSocket: its connection, its two threads, and how it ended."""

    def __init__(self, server: "StreamServer", sock: socket.socket, request: Request):
        self.server = server
        self.sock = sock
        self.request = request
        self.ws = WSConnection(ConnectionType.SERVER)
        self.lock = threading.Lock()  # wsproto's state, for both threads
        # One frame on the wire at a time, in the order wsproto made them. Apart from `lock`, so
        # a read goes on while a send waits for a slow client.
        self.send_lock = threading.Lock()
        self.read_lock = threading.Lock()  # one thread reads the socket at a time
        self.messages = Messages(self)
        self.received: Deque[Any] = deque()  # whole messages stream_fn has not taken yet
        self.parts: List[Any] = []  # the fragments of the message being received
        self.size = 0
        self.ended = False  # no more messages for stream_fn (those received are still delivered)
        self.pulling = False  # stream_fn waits in next_message (and reads the socket itself)
        self.stopping = False
        self.finished = threading.Event()
        self.leftover = b""
        # Wakes a stream_fn waiting for a message when the stream ends from elsewhere (a stop).
        self.wake_reader, self.wake_writer = socket.socketpair()

    # ---- the opening handshake (in the worker's main thread) -----------------------------
    def accept(self, raw_request: bytes, leftover: bytes) -> bool:
        try:
            self.ws.receive_data(raw_request)
            events = list(self.ws.events())
        except RemoteProtocolError as error:
            self._refuse("400 Bad Request", f"not a WebSocket handshake: {error}")
            return False
        if not any(isinstance(event, Handshake) for event in events):
            self._refuse("400 Bad Request", "not a WebSocket handshake")
            return False
        try:
            self.sock.sendall(self.ws.send(AcceptConnection()))
        except OSError:
            return False
        self.leftover = leftover  # frames read with the request: the first bytes read
        return True

    def _refuse(self, status: str, message: str, extra: str = "") -> None:
        log.warning(f"{self.request.method} {self.request.path}: {status[:3]}: {message}")
        try:
            self.sock.sendall(_http_error(status, message, extra))
        except OSError:
            pass

    def start(self) -> None:
        threading.Thread(target=self._watch, name="smsuper-stream-watch", daemon=True).start()
        threading.Thread(target=self._handle, name="smsuper-stream-handler", daemon=True).start()

    # ---- sending (either thread) ---------------------------------------------------------
    def _send(self, event: Any) -> bool:
        """False once the connection can no longer carry it."""
        with self.send_lock:
            with self.lock:
                if self.ws.state is not ConnectionState.OPEN and not isinstance(event, CloseConnection):
                    return False
                try:
                    data = self.ws.send(event)
                except LocalProtocolError:
                    return False
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def close(self, code: int, reason: str = "") -> None:
        """Send our Close (unless the client's came first); the client's reply is read in finish()."""
        with self.send_lock:
            with self.lock:
                if self.ws.state is not ConnectionState.OPEN:
                    return
                try:
                    data = self.ws.send(CloseConnection(code=code, reason=_reason(reason)))
                except LocalProtocolError:
                    return
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            try:
                self.wake_writer.send(b"x")
            except OSError:
                pass

    # ---- reading (stream_fn's thread when it asks for a message, else the watch thread) ---
    def next_message(self) -> Any:
        while True:
            if self.received:
                return self.received.popleft()
            if self.ended:
                raise StopIteration
            with self.read_lock:
                self.pulling = True
                try:
                    if not self.received and not self.ended:
                        ready = select.select([self.sock, self.wake_reader], [], [])[0] if not self.leftover \
                            else [self.sock]
                        if self.sock in ready:
                            self._read_once()
                finally:
                    self.pulling = False

    def _watch(self) -> None:
        """While stream_fn computes instead of asking for messages: answer pings, notice a Close
        or a broken connection, keep up to QUEUED messages for it (a handler that stops reading
        them stops the client through TCP's flow control)."""
        try:
            while not self.finished.wait(WATCH_INTERVAL):
                if self.pulling or len(self.received) >= QUEUED or not self.read_lock.acquire(blocking=False):
                    continue
                try:
                    # What is there now, and no more than QUEUED reads: stream_fn may want the lock.
                    for _ in range(QUEUED):
                        if (self.finished.is_set() or len(self.received) >= QUEUED
                                or self.ws.state is ConnectionState.CLOSED
                                or not select.select([self.sock], [], [], 0)[0]):
                            break
                        self._read_once()
                finally:
                    self.read_lock.release()
        except Exception as error:  # a fault of this module's: the stream ends, the worker serves on
            log.error(f"GET {self.request.path}: the stream's reader failed: {type(error).__name__}: {error}\n"
                      + "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip())
            self.close(INTERNAL_ERROR, "internal error of the server")
            self._end()

    def _read_once(self) -> None:
        """One read of the socket, and what it brought (holding read_lock)."""
        if self.leftover:
            data, self.leftover = self.leftover, b""
        else:
            try:
                data = self.sock.recv(READ_SIZE)
            except OSError:
                data = b""
        with self.lock:
            if self.ws.state is ConnectionState.CLOSED:
                self._end()
                return
            self.ws.receive_data(data or None)
            events = list(self.ws.events())
        limit = self.server.max_message_bytes
        for event in events:
            if isinstance(event, Message):
                if self.ended:
                    continue  # the server is stopping, or the message was too big: no new work
                self.parts.append(event.data)
                # The limit is in bytes, as the client sent them (a text's UTF-8).
                self.size += len(event.data.encode("utf-8")) if isinstance(event, TextMessage) else len(event.data)
                if self.size > limit:
                    self.parts, self.size = [], 0
                    self.close(TOO_BIG, f"a message may hold at most {limit} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
                    self._end()
                elif event.message_finished:
                    parts, self.parts, self.size = self.parts, [], 0
                    self.received.append("".join(parts) if isinstance(event, TextMessage) else b"".join(parts))
            elif isinstance(event, Ping):
                self._send(event.response())
            elif isinstance(event, CloseConnection):
                self._end()
                with self.lock:
                    state = self.ws.state
                if state is ConnectionState.REMOTE_CLOSING:
                    # The client's Close: echo its code, as RFC 6455 5.5.1 asks.
                    self._send(event.response())
                elif state is ConnectionState.OPEN:
                    # wsproto found a protocol error (a bad frame, text that is not UTF-8).
                    self.close(event.code, event.reason or "")
        if not data:
            self._end()

    # ---- the handler ---------------------------------------------------------------------
    def _handle(self) -> None:
        code, reason = NORMAL, ""
        outgoing: Optional[Iterator[Any]] = None
        try:
            outgoing = self.server.open(self.request, self.messages)
            for item in outgoing:
                if isinstance(item, str):
                    event: Any = TextMessage(data=item)
                elif isinstance(item, (bytes, bytearray, memoryview)):
                    event = BytesMessage(data=bytes(item))
                else:
                    raise TypeError(f"stream_fn yielded a {type(item).__name__}: yield str (a text message) "
                                    f"or bytes (a binary message)")
                if not self._send(event):
                    break  # the client closed or went away: nobody to send to
            if self.stopping:
                code, reason = GOING_AWAY, "the server is stopping"
        except CloseStream as close:
            code, reason = close.code, close.reason
        except Exception as error:
            code, reason = INTERNAL_ERROR, f"stream_fn raised {type(error).__name__}: {error}"
            trace = "".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip()
            log.error(f"GET {self.request.path}: stream closed with {INTERNAL_ERROR}: {reason}\n{trace}")
        finally:
            close_outgoing = getattr(outgoing, "close", None)
            if close_outgoing is not None:
                try:
                    close_outgoing()  # the generator's finally blocks run now
                except Exception:
                    pass
        self.close(code, reason)
        self.finish()

    def finish(self) -> None:
        """Read until the client's Close (CLOSE_WAIT at most), then let the connection go."""
        deadline = time.monotonic() + CLOSE_WAIT
        self._end()
        with self.read_lock:
            while self.ws.state is ConnectionState.LOCAL_CLOSING:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    break
                self._read_once()
        self.finished.set()
        _drop(self.sock)
        self.wake_reader.close()
        self.wake_writer.close()
        self.server.forget(self)

    # ---- stopping (the server's stop thread) ---------------------------------------------
    def stop(self) -> None:
        """No more messages; stream_fn finishes what it has, then the stream closes with 1001."""
        self.stopping = True
        self._end()

    def force_close(self) -> None:
        """The stop deadline passed: 1001 now, whatever stream_fn is doing."""
        self.close(GOING_AWAY, "the server is stopping")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class StreamServer:
    """The streams of one worker: takes connections, bounds their number, stops them."""

    def __init__(self, path: str, open_stream: Callable[[Request, Messages], Iterator[Any]],
                 limit: int, max_message_bytes: int, stop_deadline: float):
        self.path = path
        self.open = open_stream
        self.limit = limit
        self.max_message_bytes = max_message_bytes
        self.stop_deadline = stop_deadline  # seconds from the stop to the forced 1001
        self.streams: Set[Stream] = set()
        self.lock = threading.Lock()
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.stopper: Optional[threading.Thread] = None

    def claims(self, req: Any) -> bool:
        """Whether gunicorn's parsed request opens a stream: a GET of the path asking for a WebSocket."""
        if req.method != "GET" or req.path != self.path:
            return False
        return any(name == "UPGRADE" and value.strip().lower() == "websocket" for name, value in req.headers)

    def take(self, sock: socket.socket, req: Any, leftover: bytes) -> None:
        """The connection is this server's now (the worker neither keeps nor closes it)."""
        stream = Stream(self, sock, Request(_environ(req)))
        with self.lock:
            full = len(self.streams) >= self.limit
            stopping = self.stop_requested.is_set()
            if not full and not stopping:
                self.streams.add(stream)
        if full or stopping:
            message = (f"this worker holds {self.limit} bidirectional streams already "
                       f"(SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER): try again" if full
                       else "the server is stopping")
            stream._refuse("503 Service Unavailable", message, "Retry-After: 1\r\n")
            _drop(sock)
            return
        if stream.accept(_raw_request(req), leftover):
            stream.start()
        else:
            self.forget(stream)
            _drop(sock)

    def forget(self, stream: Stream) -> None:
        with self.lock:
            self.streams.discard(stream)
            if not self.streams and self.stop_requested.is_set():
                self.stopped.set()

    def open_count(self) -> int:
        with self.lock:
            return len(self.streams)

    # ---- stopping ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """From a signal handler: only records it; the stop thread does the work."""
        self.stop_requested.set()
        if self.stopper is None:
            self.stopper = threading.Thread(target=self._stop, name="smsuper-stream-stop", daemon=True)
            self.stopper.start()

    def _stop(self) -> None:
        began = time.monotonic()
        with self.lock:
            streams = list(self.streams)
            if not streams:
                self.stopped.set()
        for stream in streams:
            stream.stop()
        if streams:
            log.info(f"stopping: {len(streams)} bidirectional stream(s) finish, then close with 1001")
        if self.stopped.wait(max(0.0, self.stop_deadline - (time.monotonic() - began))):
            return
        with self.lock:
            late = list(self.streams)
        if late:
            log.warning(f"{len(late)} bidirectional stream(s) still running at the stop deadline: closed with 1001")
        for stream in late:
            stream.force_close()

    def stop_and_wait(self, heartbeat: Callable[[], None] = lambda: None) -> None:
        """At the worker's exit: every stream ends (or is closed) before the process goes.
        `heartbeat` tells the gunicorn master meanwhile that the worker is not stuck."""
        self.request_stop()
        deadline = time.monotonic() + self.stop_deadline + CLOSE_WAIT + 2
        while self.stopper is not None and self.stopper.is_alive() and time.monotonic() < deadline:
            self.stopper.join(1.0)
            heartbeat()


def _raw_request(req: Any) -> bytes:
    """gunicorn's parsed request as bytes again, for wsproto's handshake (it parses with h11)."""
    lines = ["%s %s HTTP/%d.%d" % ((req.method, req.uri) + tuple(req.version))]
    lines += [f"{name}: {value}" for name, value in req.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _drop(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
