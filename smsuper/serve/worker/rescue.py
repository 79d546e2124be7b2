"""Taking nginx's kept connections back from a keep-alive worker that does not run.

A keep-alive worker (keepalive_worker.py) hands its idle connections to the
others when a request runs long, but only its own watchdog thread can do that.
A worker that is stopped (SIGSTOP, a debugger) or stuck in a native call that
holds the GIL runs no thread at all, and every request nginx sends on one of
its idle connections would wait for it while the other workers are free.

So each keep-alive worker forks, before it loads the model, a small guard
process that does not depend on it running: the worker gives the guard a copy
of every connection it gains (accepted, or taken over from a sibling) and tells
it which ones it gives away. The guard watches the worker's heartbeat file;
when the worker has not touched it for STUCK_AFTER seconds, the guard takes
back each connection in the worker's file table that the worker is not
serving: it discards the request nginx may already have written and answers
with a header line nginx calls invalid. nginx treats that as "try the next
server" (`proxy_next_upstream invalid_header non_idempotent`, nginx.py) and
sends the request again on another connection, to a worker that runs; an idle
connection answered that way is simply closed by nginx. The request was never
read by the app, so sending it again is safe. Nothing else makes nginx resend:
a worker that dies mid-request is still one 502.

Who serves a connection is settled by a POSIX record lock on one byte of a
lock file all workers share, at the offset of the connection's inode number:
a worker holds it while it serves a request from the connection, and the guard
takes a connection back only if it gets the lock at once. The guard keeps the
lock, and the connection open, until nginx has read the answer and closed it
(a request nginx writes meanwhile must not fail: that would be a 502). The
stuck worker finds its taken-back connections locked or closed when it runs
again, and forgets them.

Why a guard per worker and not the gunicorn master: the copies must never
outlive the worker. The guard dies with its worker (parent-death signal
SIGKILL), so a dead worker's connections close at once, exactly as without
copies, and nginx's next request never meets one (a 502 for the request the
worker was serving, nothing for the others). Copies held by a longer-lived
process would stay open after the worker's death until that process noticed
and shut them down: a request nginx sent in between waited for its timeout.
For the same reason a worker closes a connection with shutdown(), which reaches
nginx whoever else holds a copy.
"""

from __future__ import annotations

import fcntl
import gc
import os
import select
import signal
import socket
import struct
import tempfile
import time
from typing import Dict, List, Optional, Set

from ... import log, titles
from ...init import capabilities
from .. import timeouts

# A worker that has not touched its heartbeat this long is stopped or stuck (an idle
# worker touches it every NOTIFY_EVERY; a busy one has handed its idle connections over
# after keepalive_worker.HAND_OVER_AFTER already, if its watchdog can run).
STUCK_AFTER = timeouts.GUARD_STUCK_AFTER
NOTIFY_EVERY = timeouts.GUARD_HEARTBEAT
TICK = 0.1  # how often the guard looks again while its worker is stuck
# What the guard answers on a connection it takes back: a status line, then a header
# line without a colon, which nginx calls an invalid header (and resends the request).
TAKEN_BACK = b"HTTP/1.1 503 Service Unavailable\r\nsmsuper worker not running resend\r\n\r\n"
# A taken-back connection nginx has not closed after this long is shut down anyway.
TAKEN_BACK_LIMIT = timeouts.GUARD_TAKEN_BACK_LIMIT
# How long the guard waits for nginx to close the idle connections it answered before it
# answers the ones holding a request (normally nginx closes them within a millisecond).
SETTLE = 0.3
TITLE = "gunicorn: worker guard [smsuper serve]"
_ADD, _FORGET = b"+", b"-"
_BATCH = 64  # descriptors or inode numbers per message


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _has_unread(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
    except OSError:
        return True  # broken: answer it like a waiting one (nginx sees the error either way)


def _discard_unread(sock: socket.socket) -> None:
    try:
        while sock.recv(65536, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass


class Locks:
    """The lock file every worker and guard shares; made in the master before the first fork."""

    def __init__(self, directory: Optional[str]) -> None:
        self.file = tempfile.TemporaryFile(dir=directory)  # unlinked: only its locks matter
        self.fd = self.file.fileno()

    def claim(self, inode: int) -> bool:
        """Lock the connection for one request; False when its guard is taking it back."""
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, inode)
        except OSError:
            return False
        return True

    def release(self, inode: int) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, inode)
        except OSError:
            pass


class Guard:
    """The worker's side: the channel to its guard process."""

    def __init__(self, channel: socket.socket, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        self.broken = False

    @classmethod
    def start(cls, heartbeat_fd: int, locks: Locks) -> Optional["Guard"]:
        """Fork the guard (in the worker, before it loads the model: the guard stays small)."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as error:
            log.warning(f"worker {os.getpid()}: no guard ({error}): its idle connections wait for it if it stops running")
            return None
        worker = os.getpid()
        try:
            pid = os.fork()
        except OSError as error:
            ours.close()
            theirs.close()
            log.warning(f"worker {worker}: cannot fork its guard ({error}): its idle connections wait for it "
                        f"if it stops running")
            return None
        if pid == 0:
            status = 0
            try:
                _guard_main(theirs.fileno(), heartbeat_fd, locks.fd, worker)
            except BaseException as error:  # never back into gunicorn's code in this process
                log.warning(f"the guard of worker {worker} stopped: {error!r}; that worker's idle connections "
                            f"wait for it if it stops running")
                status = 1
            os._exit(status)
        theirs.close()
        ours.setblocking(False)
        return cls(ours, pid)

    def _send(self, data: bytes, fds: List[int]) -> None:
        if self.broken:
            return
        try:
            socket.send_fds(self.channel, [data], fds) if fds else self.channel.send(data)
        except (BlockingIOError, InterruptedError):
            pass  # the guard is busy: these cannot be taken back, nothing else changes
        except OSError:
            self.broken = True  # the guard is gone (killed): the worker serves on without it
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except OSError:
                pass

    def gained(self, sock: socket.socket) -> int:
        """A connection this worker now holds; returns its inode number (its name everywhere)."""
        self._send(_ADD, [sock.fileno()])
        return _inode(sock)

    def gave_away(self, inodes: List[int]) -> None:
        """Connections now in a sibling's hands: the guard must not keep them open."""
        for start in range(0, len(inodes), _BATCH):
            batch = inodes[start:start + _BATCH]
            self._send(_FORGET + struct.pack(f"{len(batch)}Q", *batch), [])

    def close_in_child(self) -> None:
        """In a process the user's code forked: it must not talk to the guard."""
        try:
            os.close(self.channel.detach())
        except OSError:
            pass


# ---- the guard process -----------------------------------------------------------------------

def _guard_main(channel_fd: int, heartbeat_fd: int, lock_fd: int, worker: int) -> None:
    # The signal handlers are gunicorn's master's (copied at the worker's fork): a signal must
    # never run them here. The guard ends with its worker, or with SIGTERM/SIGKILL.
    signal.set_wakeup_fd(-1)
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(number, signal.SIG_IGN if number == signal.SIGPIPE else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    capabilities.die_with_parent(signal.SIGKILL)
    if os.getppid() != worker:
        return  # the worker died before the line above
    gc.disable()  # the guard allocates little; a collection would touch (copy) the worker's pages
    keep = sorted({0, 1, 2, channel_fd, heartbeat_fd, lock_fd})
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, 65536)
    titles.set_title(TITLE)
    _Rescuer(socket.socket(fileno=channel_fd), heartbeat_fd, lock_fd, worker).run()


def _socket_inodes(pid: int) -> Set[int]:
    """The sockets in a process's file table, by inode (what /proc/PID/fd links to)."""
    found: Set[int] = set()
    directory = f"/proc/{pid}/fd"
    for name in os.listdir(directory):
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


class _Rescuer:
    def __init__(self, channel: socket.socket, heartbeat_fd: int, lock_fd: int, worker: int) -> None:
        self.channel = channel
        channel.setblocking(False)
        self.heartbeat_fd = heartbeat_fd
        self.lock_fd = lock_fd
        self.worker = worker
        self.copies: Dict[int, socket.socket] = {}  # inode -> the guard's copy
        self.polled: Dict[int, int] = {}  # fd -> inode
        self.taken: Dict[int, float] = {}  # inode -> when: answered, locked, waiting for nginx to close it
        self.poller = select.poll()
        self.poller.register(channel.fileno(), select.POLLIN)
        self.told = False  # logged for this stuck spell
        self.settling: Set[int] = set()  # idle connections answered, until nginx has closed them
        self.settled_by = 0.0
        self.next_look = 0.0

    def run(self) -> None:
        while True:
            now = time.monotonic()
            idle_for = now - os.fstat(self.heartbeat_fd).st_mtime  # gunicorn writes monotonic times
            stuck = idle_for > STUCK_AFTER
            if not stuck:
                self.told = False
            elif self.copies and now >= self.next_look:
                self.next_look = now + TICK
                self._take_back()
            for inode in [inode for inode, since in self.taken.items() if now - since > TAKEN_BACK_LIMIT]:
                self._drop(inode)
            # Until the heartbeat would be stale (before the first one the file holds a wall-clock time).
            wait = TICK if stuck or self.taken else min(max(TICK, STUCK_AFTER - idle_for + TICK / 2), STUCK_AFTER)
            for fd, _ in self.poller.poll(wait * 1000):
                if fd == self.channel.fileno():
                    if not self._receive():
                        return  # the worker closed its end: it is exiting
                else:
                    self._drop(self.polled.get(fd))

    def _receive(self) -> bool:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.channel, 8 * _BATCH + 1, _BATCH)
            except (BlockingIOError, InterruptedError):
                return True
            if not data and not fds:
                return False
            if data[:1] == _FORGET:
                for (inode,) in struct.iter_unpack("Q", data[1:]):
                    if inode not in self.taken:
                        self._drop(inode)  # it lives on in another worker: closed here, not shut down
            for fd in fds:
                sock = socket.socket(fileno=fd)
                inode = _inode(sock)
                if inode in self.copies:
                    sock.close()
                    continue
                self.copies[inode] = sock
                self.polled[fd] = inode
                self.poller.register(fd, select.POLLRDHUP)  # not POLLIN: requests must not wake the guard

    def _drop(self, inode: Optional[int]) -> None:
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
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sock.close()
        if taken:
            # Only now may the worker that lost it look at it again (it finds it closed).
            fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, inode)

    def _answer(self, inodes: List[int], now: float) -> int:
        answered = 0
        for inode in inodes:
            try:
                fcntl.lockf(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, inode)
            except OSError:
                continue  # the worker is in the middle of a request on it
            # The worker says it gave a connection away before it unlocks it: what it said is
            # in the channel by now (a bidirectional stream's connection is never answered).
            self._receive()
            sock = self.copies.get(inode)
            if sock is None:
                fcntl.lockf(self.lock_fd, fcntl.LOCK_UN, 1, inode)
                continue
            _discard_unread(sock)  # the request nobody read: nginx sends it again
            try:
                sock.send(TAKEN_BACK, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError:
                pass
            # Not shut down yet: nginx may be writing a request into it this very moment, and a
            # write that fails would be a 502 instead of a resend. nginx closes it once it has
            # read the answer; until then the guard keeps the lock, so the worker reads nothing.
            self.taken[inode] = now
            answered += 1
        return answered

    def _take_back(self) -> None:
        try:
            held = _socket_inodes(self.worker)
        except FileNotFoundError:
            return  # the worker is exiting
        except OSError as error:
            if not self.told:
                self.told = True
                log.warning(f"worker {self.worker} has not run for over {STUCK_AFTER} s, but its guard cannot "
                            f"read /proc/{self.worker}/fd ({error.strerror}): its idle connections wait for it")
            return
        for inode in [inode for inode in self.copies if inode not in held and inode not in self.taken]:
            self._drop(inode)  # given away or closed while the message was on its way
        # Idle ones first, requests waiting in them only once nginx has closed those: a request
        # nginx sends again takes a connection from its cache, and one answered but not yet
        # closed there would fail that try too (nginx tries UPSTREAM_TRIES times).
        idle = [inode for inode in self.copies if inode not in self.taken and not _has_unread(self.copies[inode])]
        waiting = [inode for inode in self.copies if inode not in self.taken and inode not in idle]
        now = time.monotonic()
        taken = self._answer(idle, now)
        if taken:
            self.settling = set(self.taken)
            self.settled_by = now + SETTLE
        if waiting and (now >= self.settled_by or not self.settling & set(self.taken)):
            taken += self._answer(waiting, now)
        if taken and not self.told:
            self.told = True
            log.warning(f"worker {self.worker} has not run for over {STUCK_AFTER} s (stopped, or a native call "
                        f"holding the GIL): took back {taken} idle connection(s) it held; nginx sends their "
                        f"requests to the other workers")
