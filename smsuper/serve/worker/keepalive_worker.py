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
by the taker. (A model that holds the GIL for seconds without releasing it
delays the watchdog as long.) A retiring worker (SMSUPER_MAX_REQUESTS, or a
stop) hands its connections over the same way and exits.

The worker never closes an idle connection nginx may use: a POST that meets a
closing connection is a 502 (nginx does not resend a POST). nginx closes idle
connections itself, after its upstream keepalive_timeout.

A request that opens a bidirectional stream (a WebSocket upgrade, worker/websocket.py)
is not served here: its connection goes to the worker's StreamServer, whose threads
serve it while this loop goes on with requests. SIGWINCH (from the master's SIGTERM)
asks the streams to finish; the worker's exit waits for them.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from datetime import datetime
from typing import Any, Dict, List, Optional

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.sync import SyncWorker

# A request running this long hands the worker's idle connections to the others.
HAND_OVER_AFTER = 0.05
# Connections one worker keeps at most (nginx's own cache, `keepalive N`, bounds the total).
MAX_KEPT = 64
_FD_BATCH = 32  # descriptors per hand-over datagram


class _Kept:
    """A connection between requests: its parser (it may hold bytes already read) and origin."""

    __slots__ = ("parser", "listener", "addr", "idle_since")

    def __init__(self, parser: Any, listener: Any, addr: Any):
        self.parser = parser
        self.listener = listener
        self.addr = addr
        self.idle_since = time.monotonic()

    def clean(self) -> bool:
        """Whether a fresh parser in another process could continue it: nothing read ahead
        (nginx never pipelines, so this is the rule; the last body was discarded already)."""
        return self.parser.unreader.buf.seek(0, os.SEEK_END) == 0


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


class KeepAliveWorker(SyncWorker):
    hand_over: Optional[HandOver] = None
    # This worker's bidirectional streams (a websocket.StreamServer, set by the master's
    # post_worker_init hook when the handler module has a stream_fn), and whether to stop them.
    streams: Any = None
    stop_streams = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # In the master, before the first fork: every worker inherits the same pair.
        if KeepAliveWorker.hand_over is None:
            KeepAliveWorker.hand_over = HandOver()

    def run(self) -> None:
        timeout = self.timeout or 0.5
        for listener in self.sockets:
            listener.setblocking(0)
        if not isinstance(util.http_date, _DateHeader):
            util.http_date = _DateHeader(util.http_date)
        cfg = self.cfg
        # gunicorn's access log is off (nginx writes it); asking per request costs 5 lookups.
        self.logs_access = bool(cfg.accesslog or cfg.logconfig or cfg.logconfig_dict or cfg.syslog
                                or getattr(cfg, "logconfig_json", None))
        self.kept: Dict[socket.socket, _Kept] = {}
        self.kept_lock = threading.Lock()
        self.busy_since: Optional[float] = None
        self.next_stale_check = 0.0
        self.request_began = threading.Event()
        threading.Thread(target=self._watch, name="smsuper-hand-over", daemon=True).start()
        hand_over = self.hand_over
        assert hand_over is not None
        while self.alive:
            self.notify()
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
                            self.kept[taken] = _Kept(http.RequestParser(self.cfg, taken, ""), self.sockets[0], "")
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
            if not self.is_parent_alive():
                break
        # Retiring: the others take what this worker keeps (at a stop, nginx has closed it all).
        self._hand_over_kept()
        if self.streams is not None:
            self.streams.stop_and_wait(self.notify)
        with self.kept_lock:
            for sock in self.kept:
                util.close(sock)
            self.kept.clear()

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
            for sock in movable:
                del self.kept[sock]
            for sock in hand_over.offer(list(movable)):
                self.kept[sock] = movable[sock]

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
        self._serve(client, _Kept(http.RequestParser(self.cfg, client, addr), listener, addr))
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
                util.close(sock)

    def _serve(self, client: socket.socket, state: _Kept) -> None:
        """One request from this connection; the connection is kept if it stays open."""
        req = None
        keep = False
        self.busy_since = time.monotonic()
        if not self.request_began.is_set():
            self.request_began.set()
        try:
            req = next(state.parser)
            if self.streams is not None and self.streams.claims(req):
                # The connection is the stream's from here on: neither kept nor closed by this loop.
                self.streams.take(client, req, state.parser.unreader.buf.getvalue())
                return
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
        if keep:
            try:
                while req.body.read(8192):  # what the app left unread, so the next request starts clean
                    pass
            except (OSError, http.errors.NoMoreData):
                util.close(client)
                return
            state.idle_since = time.monotonic()
            with self.kept_lock:
                self.kept[client] = state
        else:
            util.close(client)

    def _handle_request(self, listener: Any, req: Any, client: socket.socket, addr: Any) -> bool:
        """SyncWorker.handle_request, except the connection may stay open; returns whether it does."""
        environ: Dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now() if self.logs_access else None
            resp, environ = wsgi.create(req, client, addr, listener.getsockname(), self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or len(self.kept) >= MAX_KEPT:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
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
        except Exception:
            if resp and resp.headers_sent:
                # The answer had begun: closing is the only way to tell nginx it is broken.
                self.log.exception("Error handling request")
                try:
                    client.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                raise StopIteration()
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
