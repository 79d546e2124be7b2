"""Taking nginx's kept connections back from a worker that does not run (gunicorn master side).

A keep-alive worker (keepalive_worker.py) hands its idle connections to the
others when a request runs long, but only its own watchdog thread can do that.
A worker that is stopped (SIGSTOP, a debugger) or stuck in a native call
holding the GIL runs no thread at all, and every request nginx sends on one of
its idle connections waits for it, while the other workers are free.

So the master, which does not depend on any worker, holds a copy of every
connection the workers accept (each worker passes one over `copies` right
after accept(): once per connection, not per request) and watches the
workers' heartbeat files. When a worker has not run for STUCK_AFTER seconds,
the master takes back every connection in that worker's file table which the
worker is not serving: it discards the request nginx may already have
written and answers with a response whose header is invalid. nginx treats that answer as "try the next server"
(`proxy_next_upstream invalid_header non_idempotent`, nginx.py) and sends the
request again on another connection, to a worker that runs; an idle
connection answered that way is simply dropped from nginx's cache. The request
was never read by the app, so resending it is safe. Nothing else makes nginx
resend: a worker that dies mid-request is still one 502.

Who serves a connection is settled by a POSIX record lock on one byte of a
shared lock file, at the offset of the connection's inode number: a worker
holds it while it serves a request from the connection (from the first byte
read to the response's last), and the master takes a connection back only if
it gets the lock at once. It keeps the lock, and the connection open, until
nginx has read the answer and closed it (a request nginx writes meanwhile
must not fail: that would be a 502), then discards what is unread and shuts
it down. The stuck worker finds its taken-back connections locked or closed
when it runs again and forgets them.

The copies have a cost: a connection closed by a worker must be shut down
(not just closed) to reach nginx, and a worker that dies leaves connections the
master still holds open. So the master shuts down every copy no live worker
holds any more (found twice in a row, so that a connection in the hand-over
queue between two workers is not mistaken for one), which also gives a dead
worker's request its immediate 502. Both need the workers' /proc/PID/fd (they
run as the master's own user); where it cannot be read, or anything else goes
wrong here, the master logs it once and holds no copies from then on.
"""

from __future__ import annotations

import fcntl
import os
import resource
import select
import socket
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

from .. import log

# A worker that has not touched its heartbeat this long is stopped or stuck (an idle
# worker touches it every NOTIFY_EVERY; a busy one has handed its idle connections over
# after HAND_OVER_AFTER already, if its watchdog can run).
STUCK_AFTER = 0.5
NOTIFY_EVERY = 0.1
TICK = 0.1  # how often the master looks while a worker is stuck or a copy may be orphaned
# What the master answers on a connection it takes back: a status line, then a header
# line without a colon, which nginx calls an invalid header (and resends the request).
TAKEN_BACK = b"HTTP/1.1 503 Service Unavailable\r\nsmsuper worker not running resend\r\n\r\n"
_RECEIVE_BATCH = 64
# A taken-back connection nginx has not closed after this long is shut down anyway.
TAKEN_BACK_LIMIT = 10.0


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _discard_unread(sock: socket.socket) -> None:
    try:
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass


class Channel:
    """Made in the master before the first worker forks; every worker inherits it."""

    def __init__(self, directory: Optional[str]) -> None:
        # Stream, not datagrams: a burst of accept()s must not overflow a 10-datagram queue.
        self.give, self.take = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.give.setblocking(False)
        self.take.setblocking(False)
        self.locks = tempfile.TemporaryFile(dir=directory)  # unlinked: only its locks matter
        self.lock_fd = self.locks.fileno()

    # ---- in a worker ------------------------------------------------------------
    def in_worker(self) -> None:
        """After the fork: only the master reads copies."""
        self.take.close()

    def send_copy(self, sock: socket.socket) -> int:
        """Give the master a copy of a new connection; returns its inode number (its name everywhere)."""
        try:
            socket.send_fds(self.give, [b"c"], [sock.fileno()])
        except OSError:
            pass  # master busy or gone: this connection cannot be taken back, nothing else changes
        return _inode(sock)

    def claim(self, inode: int) -> bool:
        """Lock the connection for one request; False when the master is taking it back right now."""
        try:
            fcntl.lockf(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, inode)
        except OSError:
            return False
        return True

    def release(self, inode: int) -> None:
        fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, inode)


class Unreadable(Exception):
    """A live worker's file table cannot be read (/proc hidden or restricted)."""


def _socket_inodes(pid: int) -> Set[int]:
    """The sockets in a process's file table, by inode (what /proc/PID/fd links to)."""
    found: Set[int] = set()
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found  # it has just exited
    except OSError as error:
        raise Unreadable(f"{directory}: {error.strerror}") from None
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


class Rescuer:
    """The master's side: the copies, and what it does with them."""

    def __init__(self, channel: Channel, booted: Callable[[Any], bool], in_transit: Callable[[], bool]) -> None:
        self.channel = channel
        self.booted = booted  # a worker still loading its model holds no connection yet
        self.in_transit = in_transit  # whether connections wait in the workers' hand-over queue
        self.copies: Dict[int, socket.socket] = {}
        self.poller = select.poll()
        self.polled: Dict[int, int] = {}  # fd -> inode, for copies whose peer may close
        self.maybe_orphaned: Set[int] = set()
        self.taken: Dict[int, float] = {}  # inode -> when: answered, locked, waiting for nginx to close it
        self.sweep_due = False
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # The master needs descriptors of its own (pipes and files for new workers).
        self.max_copies = max(16, (soft if soft != resource.RLIM_INFINITY else 65536) // 2 - 64)
        self.poller.register(channel.take.fileno(), select.POLLIN)
        self.told: Set[int] = set()  # workers whose connections were taken back (logged once per stop)
        self.disabled = False
        os.register_at_fork(after_in_child=self._forget_in_child)

    def _forget_in_child(self) -> None:
        """A new worker must not hold the master's copies (they would look like its own)."""
        for sock in self.copies.values():
            try:
                os.close(sock.detach())
            except OSError:
                pass
        self.copies = {}
        self.channel.in_worker()

    # ---- the master's loop -------------------------------------------------------
    def wait(self, wake_fd: int, workers: Dict[int, Any]) -> bool:
        """The arbiter's sleep: until a signal's wake-up byte, a copy arrives or a copy's peer
        closes, at most 1 s (TICK while there is work). Returns whether wake_fd is readable."""
        busy = self.sweep_due or bool(self.maybe_orphaned) or bool(self.taken) or bool(self._stuck(workers))
        self.poller.register(wake_fd, select.POLLIN)
        try:
            events = self.poller.poll((TICK if busy else 1.0) * 1000)
        finally:
            self.poller.unregister(wake_fd)
        woken = False
        try:
            for fd, _ in events:
                if fd == wake_fd:
                    woken = True
                elif fd == self.channel.take.fileno():
                    self._receive()
                else:
                    self._drop(self.polled.get(fd))
            self.tick(workers)
        except Exception as error:  # a chore of the master's loop: it must never stop gunicorn
            woken = True
            self._give_up(f"unexpected {error!r}")
        return woken

    def worker_exited(self) -> None:
        self.sweep_due = True

    def tick(self, workers: Dict[int, Any]) -> None:
        try:
            self._tick(workers)
        except Unreadable as error:
            self._give_up(f"cannot read a worker's open files: {error}")
        except Exception as error:  # a chore of the master's loop: it must never stop gunicorn
            self._give_up(f"unexpected {error!r}")

    def _give_up(self, why: str) -> None:
        """Without the workers' file tables, copies could neither be taken back safely nor told
        from a dead worker's: hold none (a stuck worker's connections then wait for it)."""
        if self.disabled:
            return
        log.warning(f"{why}: connections are no longer taken back from a worker that stops running")
        self.disabled = True
        for inode in list(self.copies):
            self._drop(inode)
        self.maybe_orphaned.clear()
        self.sweep_due = False

    def _tick(self, workers: Dict[int, Any]) -> None:
        now = time.monotonic()
        for inode in [inode for inode, since in self.taken.items() if now - since > TAKEN_BACK_LIMIT]:
            self._drop(inode)
        stuck = self._stuck(workers)
        for pid in stuck:
            self._take_back(pid, _socket_inodes(pid))
        for pid in list(self.told):
            if pid not in stuck:
                self.told.discard(pid)
        if self.sweep_due or self.maybe_orphaned:
            self._sweep(workers)

    # ---- parts -------------------------------------------------------------------
    def _stuck(self, workers: Dict[int, Any]) -> List[int]:
        if not self.copies:
            return []
        now = time.monotonic()
        stuck = []
        for pid, worker in workers.items():
            try:
                if now - worker.tmp.last_update() > STUCK_AFTER and self.booted(worker):
                    stuck.append(pid)
            except (OSError, ValueError):
                continue
        return stuck

    def _receive(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel.take, _RECEIVE_BATCH, _RECEIVE_BATCH)
            except (BlockingIOError, InterruptedError):
                return
            if not data and not fds:
                return
            for fd in fds:
                sock = socket.socket(fileno=fd)
                inode = _inode(sock)
                if self.disabled or len(self.copies) >= self.max_copies or inode in self.copies:
                    sock.close()
                    continue
                os.set_inheritable(fd, False)
                self.copies[inode] = sock
                self.polled[fd] = inode
                self.poller.register(fd, select.POLLRDHUP)  # not POLLIN: requests must not wake the master

    def _drop(self, inode: Optional[int], shut: bool = False) -> None:
        sock = self.copies.pop(inode, None) if inode is not None else None
        if sock is None:
            return
        fd = sock.fileno()
        self.polled.pop(fd, None)
        try:
            self.poller.unregister(fd)
        except KeyError:
            pass
        taken = self.taken.pop(inode, None) is not None
        if taken:
            _discard_unread(sock)  # a request nginx wrote before it saw the answer: resent already
        if shut or taken:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sock.close()
        if taken:
            self.channel.release(inode)  # only now may the worker that lost it look at it again

    def _take_back(self, pid: int, held: Iterable[int]) -> None:
        taken = 0
        for inode in held:
            sock = self.copies.get(inode)
            if sock is None or inode in self.taken or not self.channel.claim(inode):
                continue  # not a connection, or the worker is in the middle of a request on it
            _discard_unread(sock)  # the request nobody read: nginx sends it again
            try:
                sock.send(TAKEN_BACK, socket.MSG_DONTWAIT)
            except OSError:
                pass
            # Not shut down yet: nginx may be writing a request into it this very moment, and a
            # write that fails would be a 502 instead of a resend. nginx closes it once it has
            # read the answer; until then the master keeps the lock, so the worker reads nothing.
            self.taken[inode] = time.monotonic()
            taken += 1
        if taken and pid not in self.told:
            self.told.add(pid)
            log.warning(f"worker {pid} has not run for over {STUCK_AFTER} s (stopped, or a native call holding "
                        f"the GIL): took back {taken} idle connection(s) it held; nginx sends their requests "
                        f"to the other workers")

    def _sweep(self, workers: Dict[int, Any]) -> None:
        """Shut down the copies no live worker holds (the connections of a dead worker)."""
        if not self.copies:
            self.sweep_due = False
            self.maybe_orphaned.clear()
            return
        if self.in_transit():
            return  # a connection between two workers is in no file table: look again later
        held: Set[int] = set()
        for pid in list(workers):
            held |= _socket_inodes(pid)
        if self.in_transit():
            return
        self.sweep_due = False
        orphaned = set(self.copies) - held
        for inode in orphaned & self.maybe_orphaned:
            self._drop(inode, shut=True)
        self.maybe_orphaned = orphaned - self.maybe_orphaned
