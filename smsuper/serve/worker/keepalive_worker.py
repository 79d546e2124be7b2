"""A sync gunicorn worker that keeps nginx's connections open between requests.

gunicorn's sync worker closes every connection after one response ("until
someone shows a buffering proxy that supports Keep-Alive to the backend"):
nginx is such a proxy, and a connect/accept/close per request costs the stack
about 30 us of CPU, an eighth of a trivial /invocations (bench/ figure 1).
This worker still runs one request at a time, in its main thread, but keeps a
connection after the response and then serves whichever comes first: the
next request on a kept connection, a connection handed over by a sibling, or a
new connection on the listener.

Keeping must not make a request wait for a busy worker while another is free.
nginx sends a request on any idle connection it holds, and only the worker
holding that connection can answer it. So when a request has run for
HAND_OVER_AFTER seconds, a watchdog thread hands every idle connection the
worker keeps to the other workers: it passes their file descriptors into a
datagram socket pair that all workers inherit from the master (SCM_RIGHTS), and
whichever worker is free takes them, like the listener's backlog. Nothing is
closed, so a request nginx is writing at that moment is not lost; it is served
by the taker. (A model that holds the GIL without releasing it stops the
watchdog too: see the guard below.) A retiring worker (SMSUPER_MAX_REQUESTS, or a
stop) hands its connections over the same way and exits.

Connections stay the worker's alone. A process the user's code forks without
exec (a helper, a multiprocessing pool) would otherwise keep copies of them
(close-on-exec does nothing there): a worker dying then leaves nginx waiting
on connections nobody serves until its timeout (504 instead of 502), and
requests sent on the dead worker's idle connections wait too. So the forked
child closes, first thing, every socket of the worker's: the listener, the
kept connections, the one being served, the hand-over pair and the guard's
channel (os.register_at_fork; a fork made by native code runs no Python hook).

The worker never closes an idle connection nginx may use: a POST that meets a
closing connection is a 502 (nginx does not resend a POST). nginx closes idle
connections itself, after its upstream keepalive_timeout.

A worker that cannot run at all (stopped, or in a native call holding the
GIL) cannot hand anything over: its guard process takes its idle connections
back instead (rescue.py). For that the worker gives the guard a copy of each
connection it gains and says which ones it hands over, locks a connection
while it serves a request from it, touches its heartbeat at least every
NOTIFY_EVERY when idle, and shuts a connection down when it closes it (the
guard's copy would keep it open for nginx otherwise).

The request's bytes are read, and the answer's written, by lean_http.py for the one
shape nginx sends (a Content-Length body, plain token headers): gunicorn's parser and
wsgi.create cost a trivial request more CPU than the whole rest of the HTTP layer. Any
other request goes to gunicorn's parser with the bytes read so far, as before.

A request that opens a bidirectional stream (a WebSocket upgrade, worker/websocket.py)
is not served here: its connection goes to the worker's StreamServer, whose threads
serve it while this loop goes on with requests. SIGWINCH (from the master's SIGTERM)
asks the streams to finish; the worker's exit waits for them.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from datetime import datetime
from typing import Any, Dict, List, Optional

from gunicorn import http, util
from gunicorn.config import PostRequest, PreRequest
from gunicorn.http import wsgi
from gunicorn.workers.sync import SyncWorker

from .. import timeouts
from ..nginx import PROXY_BUFFER
from . import lean_http
from .rescue import NOTIFY_EVERY, Guard, Locks

# A request running this long hands the worker's idle connections to the others.
HAND_OVER_AFTER = timeouts.HAND_OVER_AFTER
# Connections one worker keeps at most (nginx's own cache, `keepalive N`, bounds the total).
MAX_KEPT = 64
_FD_BATCH = 32  # descriptors per hand-over datagram
# nginx reads an answer's status line and headers into one PROXY_BUFFER; gunicorn adds a few
# of its own. Headers that do not fit are "an invalid header" to nginx, which then sends the
# request to another worker (rescue.py needs that resend): the request would run again.
HEADER_ROOM = PROXY_BUFFER - 1024


PRE_REQUEST_DEFAULT = PreRequest.default
POST_REQUEST_DEFAULT = PostRequest.default


def _nothing(*args: Any) -> None:
    pass


class _HeadersTooLarge(Exception):
    pass


def _header_bytes(resp: Any) -> int:
    return len(resp.status) + sum([len(name) + len(value) + 4 for name, value in resp.headers])


class _Kept:
    """A connection between requests: the bytes read ahead of its next request, and its origin."""

    __slots__ = ("reader", "listener", "addr", "idle_since", "inode")

    def __init__(self, listener: Any, addr: Any, inode: int):
        self.reader = lean_http.Reader()
        self.listener = listener
        self.addr = addr
        self.idle_since = time.monotonic()
        self.inode = inode  # the connection's name in every process (rescue.py's locks)

    def clean(self) -> bool:
        """Whether another process could continue it: nothing read ahead (nginx never
        pipelines, so this is the rule; the last body was discarded already)."""
        return not self.reader.buf


class _DateHeader:
    """gunicorn formats the Date header afresh for each response (email.utils, about 5 us,
    2% of a trivial request); it changes once a second, and nginx sends its own instead."""

    def __init__(self, format_date: Any):
        self.format_date = format_date
        self.second = -1
        self.text = ""

    def __call__(self, timestamp: Optional[float] = None) -> str:
        if timestamp is not None:
            return self.format_date(timestamp)
        now = int(time.time())
        if now != self.second:
            self.text = self.format_date(now)
            self.second = now
        return self.text


class HandOver:
    """The socket pair connections travel through between workers; made in the master."""

    def __init__(self) -> None:
        self.give, self.take = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.give.setblocking(False)
        self.take.setblocking(False)

    def offer(self, socks: List[socket.socket]) -> List[socket.socket]:
        """Pass these connections on; returns the ones that did not fit (the queue was full)."""
        for start in range(0, len(socks), _FD_BATCH):
            batch = socks[start:start + _FD_BATCH]
            try:
                socket.send_fds(self.give, [b"c"], [sock.fileno() for sock in batch])
            except OSError:
                return socks[start:]
            for sock in batch:
                sock.close()  # the receiver holds its own descriptor now
        return []

    def receive(self) -> List[socket.socket]:
        """Connections waiting to be taken, if this worker wins them."""
        taken: List[socket.socket] = []
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(self.take, 16, _FD_BATCH)
            except (BlockingIOError, InterruptedError):
                return taken
            for fd in fds:
                sock = socket.socket(fileno=fd)
                sock.setblocking(True)
                util.close_on_exec(sock)
                taken.append(sock)


def _shut(sock: socket.socket) -> None:
    """Close a connection for good: the guard holds a copy, so close() alone would not end it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    util.close(sock)


class KeepAliveWorker(SyncWorker):
    hand_over: Optional[HandOver] = None
    locks: Optional[Locks] = None
    locks_tried = False
    guard: Optional[Guard] = None
    # This worker's bidirectional streams (a websocket.StreamServer, set by the master's
    # post_worker_init hook when the handler module has a stream_fn), and whether to stop them.
    streams: Any = None
    stop_streams = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # In the master, before the first fork: every worker inherits the same pair and lock file.
        if KeepAliveWorker.hand_over is None:
            KeepAliveWorker.hand_over = HandOver()
        if not KeepAliveWorker.locks_tried:
            KeepAliveWorker.locks_tried = True
            try:
                KeepAliveWorker.locks = Locks(self.cfg.worker_tmp_dir)
            except OSError as error:
                self.log.warning("no lock file for taking connections back from a stopped worker (%s): "
                                 "a worker that stops running keeps its idle connections waiting", error)

    def init_process(self) -> None:
        if self.locks is not None:
            self.guard = Guard.start(self.tmp.fileno(), self.locks)
        super().init_process()

    def _claim(self, inode: int) -> bool:
        return self.guard is None or self.locks is None or self.locks.claim(inode)

    def _release(self, inode: int) -> None:
        if self.guard is not None and self.locks is not None:
            self.locks.release(inode)

    def _gained(self, sock: socket.socket) -> int:
        if self.guard is not None:
            return self.guard.gained(sock)
        return os.fstat(sock.fileno()).st_ino

    def run(self) -> None:
        # Idle, the worker still touches its heartbeat often: a stale one means "not running".
        timeout = min(self.timeout or 0.5, NOTIFY_EVERY)
        for listener in self.sockets:
            listener.setblocking(0)
        if not isinstance(util.http_date, _DateHeader):
            util.http_date = _DateHeader(util.http_date)
        cfg = self.cfg
        # gunicorn's access log is off (nginx writes it); asking per request costs 5 lookups.
        self.logs_access = bool(cfg.accesslog or cfg.logconfig or cfg.logconfig_dict or cfg.syslog
                                or getattr(cfg, "logconfig_json", None))
        # The lean reader (lean_http.py) serves what nginx sends. Behind nginx none of these is
        # ever set (master/gunicorn_app.py); each would need gunicorn's parser for every request.
        self.lean = not (self.logs_access or cfg.is_ssl or cfg.proxy_protocol or cfg.secure_scheme_headers)
        self.environ = lean_http.Environ(cfg)
        self.pre_request, self.post_request = cfg.pre_request, cfg.post_request  # a lookup each, else
        error_log = getattr(self.log, "error_log", None)
        if cfg.pre_request is PRE_REQUEST_DEFAULT and error_log is not None and not error_log.isEnabledFor(logging.DEBUG):
            self.pre_request = _nothing  # gunicorn's own only logs the request line at debug level
        if cfg.post_request is POST_REQUEST_DEFAULT:
            self.post_request = _nothing  # gunicorn's own does nothing
        limit_fields = cfg.limit_request_fields
        self.max_fields = limit_fields if 0 < limit_fields <= 32768 else 32768
        self.max_field_size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 0
        self.kept: Dict[socket.socket, _Kept] = {}
        self.kept_lock = threading.Lock()
        self.busy_since: Optional[float] = None
        self.serving: Optional[socket.socket] = None  # the connection of the request being run
        self.notified_at = 0.0
        self.next_stale_check = 0.0
        self.request_began = threading.Event()
        threading.Thread(target=self._watch, name="smsuper-hand-over", daemon=True).start()
        os.register_at_fork(after_in_child=self._drop_connections_in_forked_child)
        hand_over = self.hand_over
        assert hand_over is not None
        while self.alive:
            # A system call each: under load a pass serves one request, and a heartbeat as old as
            # half of NOTIFY_EVERY is still fresh (an idle pass waits at most `timeout`).
            now = time.monotonic()
            if now - self.notified_at >= NOTIFY_EVERY / 2:
                self.notified_at = now
                self.notify()
                if not self.is_parent_alive():
                    break
            if self.stop_streams and self.streams is not None:
                self.streams.request_stop()
            with self.kept_lock:
                watched: List[Any] = list(self.kept)
            watched.extend(self.sockets)
            watched.append(hand_over.take)
            watched.append(self.PIPE[0])
            try:
                ready = select.select(watched, [], [], timeout)[0]
            except OSError as error:
                if error.errno in (errno.EINTR, errno.EBADF):
                    continue
                raise
            # One request from each ready kept connection per pass, and as many from the
            # listener's backlog (plus one): under load some kept connection is always
            # ready, and the backlog, where nginx's extra connections wait, would starve.
            served = 0
            for sock in ready:
                with self.kept_lock:
                    state = self.kept.pop(sock, None)
                if state is not None:
                    self._serve(sock, state)
                    served += 1
            for sock in ready:
                if sock is hand_over.take:
                    with self.kept_lock:
                        for taken in hand_over.receive():
                            # A unix socket's peer has no address; gunicorn's own accept() says "" too.
                            self.kept[taken] = _Kept(self.sockets[0], "", self._gained(taken))
                elif sock == self.PIPE[0]:
                    try:
                        os.read(self.PIPE[0], 4096)
                    except OSError:
                        pass
                elif sock in self.sockets:
                    for _ in range(served + 1):
                        if not self.alive or not self._accept(sock):
                            break
            self._close_stale()
        # Retiring: the others take what this worker keeps (at a stop, nginx has closed it all).
        self._hand_over_kept()
        if self.streams is not None:
            self.streams.stop_and_wait(self.notify)
        with self.kept_lock:
            for sock in self.kept:
                _shut(sock)
            self.kept.clear()

    def _drop_connections_in_forked_child(self) -> None:
        """In a process forked by the user's code: none of the worker's sockets may live on in it.
        No lock is taken: the thread that held one at the fork does not exist here."""
        hand_over = self.hand_over
        sockets: List[Any] = [*self.kept, self.serving]
        if hand_over is not None:
            sockets += [hand_over.give, hand_over.take]
        if self.guard is not None:
            self.guard.close_in_child()
            self.guard = None
        for sock in sockets:
            if sock is not None:
                try:
                    os.close(sock.detach())  # detach: closed even if a file object still refers to it
                except OSError:
                    pass
        self.kept = {}
        self.serving = None
        for listener in self.sockets:
            try:
                listener.close()
            except OSError:
                pass
    def handle_winch(self, sig: int, frame: Any) -> None:
        # A signal handler only records (the loop, woken by gunicorn's wakeup pipe, acts).
        self.stop_streams = True

    def _watch(self) -> None:
        """The watchdog: asleep unless a request runs; hands connections over if it runs long."""
        while True:
            self.request_began.wait()
            self.request_began.clear()
            while True:
                time.sleep(HAND_OVER_AFTER)
                began = self.busy_since
                if began is None:
                    break  # idle again: wait for the next request
                if time.monotonic() - began >= HAND_OVER_AFTER:
                    self._hand_over_kept()

    def _hand_over_kept(self) -> None:
        hand_over = self.hand_over
        with self.kept_lock:
            if not self.kept or hand_over is None:
                return
            movable = {sock: state for sock, state in self.kept.items() if state.clean()}
            if not movable:
                return
            for sock in movable:
                del self.kept[sock]
            if self.guard is not None:
                self.guard.gave_away([state.inode for state in movable.values()])
            for sock in hand_over.offer(list(movable)):
                self.kept[sock] = movable[sock]
                self._gained(sock)  # it did not fit the queue: the guard gets it back

    def _accept(self, listener: Any) -> bool:
        """Serve the first request of a new connection; False when none was waiting."""
        try:
            client, addr = listener.accept()
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return False
            raise
        client.setblocking(1)
        util.close_on_exec(client)
        self._serve(client, _Kept(listener, addr, self._gained(client)))
        return True

    def _close_stale(self) -> None:
        """Only for an nginx without an upstream keepalive_timeout (before 1.15.3)."""
        now = time.monotonic()
        if now < self.next_stale_check:
            return
        self.next_stale_check = now + 1.0
        limit = now - self.cfg.keepalive
        with self.kept_lock:
            for sock in [sock for sock, state in self.kept.items() if state.idle_since < limit]:
                del self.kept[sock]
                _shut(sock)

    def _serve(self, client: socket.socket, state: _Kept) -> None:
        """The next request from this connection, and any read with it already (a client that
        pipelines: no select() would wake up for those); the connection is kept if it stays open."""
        while self._serve_one(client, state):
            pass

    def _serve_one(self, client: socket.socket, state: _Kept) -> bool:
        """One request from this connection; True when the next one is buffered already (then
        the connection is neither kept nor closed yet)."""
        req = None
        keep = False
        if not self._claim(state.inode):
            util.close(client)  # its guard is taking it back (this worker did not run for a while)
            return False
        self.serving = client
        self.busy_since = time.monotonic()
        if not self.request_began.is_set():
            self.request_began.set()
        parser = None
        try:
            req, parser = self._read_request(client, state)
            if parser is not None and self.streams is not None and self.streams.claims(req):
                # The connection is the stream's from here on: neither kept nor closed by this loop,
                # nor ever taken back by the guard (told before the lock goes: rescue.py).
                if self.guard is not None:
                    self.guard.gave_away([state.inode])
                self._release(state.inode)
                self.streams.take(client, req, parser.unreader.buf.getvalue())
                return False
            keep = self._handle_request(state.listener, req, client, state.addr)
        except (http.errors.NoMoreData, StopIteration):
            pass  # nginx closed it (idle, or it is quitting)
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except BaseException as error:  # gunicorn's handle_error answers 400/500 and logs
            self.handle_error(req, client, state.addr, error)
        finally:
            self.busy_since = None
            self.serving = None
        if keep and parser is not None:
            try:
                while req.body.read(8192):  # what the app left unread, so the next request starts clean
                    pass
            except (OSError, http.errors.NoMoreData):
                keep = False
            state.reader.buf = parser.unreader.buf.getvalue()  # read beyond that body, if anything
        now = time.monotonic()
        if now - self.notified_at >= NOTIFY_EVERY:  # a pass serving many requests is not a stuck worker
            self.notified_at = now
            self.notify()
        # At once: a worker stopped while it holds the lock keeps that connection from its guard.
        self._release(state.inode)
        if keep and state.reader.buf and self.alive:
            return True
        if keep:
            state.idle_since = now
            with self.kept_lock:
                self.kept[client] = state
        else:
            _shut(client)
        return False

    def _read_request(self, client: socket.socket, state: _Kept) -> Any:
        """The connection's next request, and the gunicorn parser that read it (None when the lean
        reader did: then its body is read whole, and what follows it stays in state.reader)."""
        reader = state.reader
        buf, end = reader.read_head(client)
        if not buf:
            raise StopIteration()  # nginx closed it between requests
        if end > 0 and self.lean:
            req = lean_http.parse_head(buf[:end], self.max_fields, self.max_field_size)
            if req is not None:
                body = reader.read_body(client, buf, end, req.content_length)
                if body is None:
                    raise http.errors.NoMoreData(b"")  # closed in the middle of the body
                req.body = body
                req.peer_addr = req.remote_addr = state.addr
                return req, None
        # Not of nginx's shape: gunicorn's parser reads it, from the bytes read so far on.
        parser = http.RequestParser(self.cfg, client, state.addr)
        parser.unreader.unread(buf)
        reader.buf = b""
        return next(parser), parser

    def _handle_request(self, listener: Any, req: Any, client: socket.socket, addr: Any) -> bool:
        """SyncWorker.handle_request, except the connection may stay open; returns whether it does."""
        environ: Dict[str, Any] = {}
        resp = None
        try:
            self.pre_request(self, req)
            request_start = datetime.now() if self.logs_access else None
            if isinstance(req, lean_http.LeanRequest):
                environ = self.environ.create(req, req.body, client, addr, listener)
                req.body = environ["wsgi.input"]
            else:
                environ = wsgi.create(req, client, addr, listener.getsockname(), self.cfg)[1]
            resp = lean_http.Response(req, client, self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or len(self.kept) >= MAX_KEPT:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if resp.status is not None and _header_bytes(resp) > HEADER_ROOM:
                    raise _HeadersTooLarge(_header_bytes(resp))
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                if request_start is not None:
                    self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except Exception as error:
            if isinstance(error, _HeadersTooLarge):
                # Closed unanswered: nginx's 502, for a request that ran once.
                self.log.error("the answer's status line and headers take %s bytes, more than the %s nginx "
                               "reads (a header the model's code set, e.g. custom attributes, is too long): "
                               "the client gets a 502", error.args[0], HEADER_ROOM)
            elif resp and resp.headers_sent:
                # The answer had begun: closing is the only way to tell nginx it is broken.
                self.log.exception("Error handling request")
            if isinstance(error, _HeadersTooLarge) or (resp and resp.headers_sent):
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                raise StopIteration()
            raise
        finally:
            try:
                self.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
