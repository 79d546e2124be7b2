"""nginx's access log: a FIFO in the runtime directory that PID 1 relays to stdout.

nginx cannot write to PID 1's stdout by path (/dev/stdout of an unprivileged
process may be a pipe owned by root it cannot reopen), so it writes to a FIFO
and PID 1's loop copies whole lines to fd 1. PID 1 also holds a write end
itself: with no writer at all (while nginx restarts) a FIFO reads as EOF
forever and would spin the loop.

The FIFO lives in PID 1's own part of the runtime directory (runtime.py), where
the workload cannot replace it; it belongs to the workload's user only so that
nginx may open it. PID 1 still checks that what it opened is that FIFO.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Tuple

from .. import log
from ..init.relay import READ_SIZE, LineRelay, write_all


class AccessLogRelay:
    def __init__(self, path: str, owner: Optional[Tuple[int, int]] = None, as_json: bool = False):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.mkfifo(path, 0o600)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
        # Reader first: opening a FIFO's write end without a reader fails (O_NONBLOCK) or blocks.
        flags = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(path, os.O_RDONLY | flags)
        if not stat.S_ISFIFO(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise OSError(f"{path} is not the FIFO smsuper made")
        self._keep_open = os.open(path, os.O_WRONLY | flags)
        self._as_json = as_json
        self._pending = b""
        self._relay = None if as_json else LineRelay(self.fd, 1)

    def pump(self) -> None:
        """Copy what nginx has written; called by PID 1's loop when the FIFO is readable."""
        if self._relay is not None:
            self._relay.pump()
            return
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            lines = (self._pending + data).split(b"\n")
            self._pending = lines.pop()
            out = "".join(log.json_line("nginx", "info", line.decode("utf-8", "replace")) + "\n"
                          for line in lines if line)
            write_all(1, out.encode("utf-8"))
            if len(data) < READ_SIZE:
                return

    def close(self) -> None:
        self.pump()
        for fd in (self._keep_open, self.fd):
            try:
                os.close(fd)
            except OSError:
                pass
