"""nginx's access log: a FIFO in the runtime directory that PID 1 relays to stdout.

nginx cannot write to PID 1's stdout by path (/dev/stdout of an unprivileged
process may be a pipe owned by root it cannot reopen), so it writes to a FIFO
and PID 1's loop copies whole lines to fd 1. PID 1 also holds a write end
itself: with no writer at all (while nginx restarts) a FIFO reads as EOF
forever and would spin the loop.

Each line nginx writes starts with the route label and the status
(nginx.py's log_format): PID 1 counts them for smsuper_http_requests_total
(metrics/responses.py) and prints the rest of the line, leaving out /ping
unless SMSUPER_LOG_PING. Lines nginx did not shape so (nothing else should
write here) are printed as they are and not counted.

The FIFO lives in PID 1's own part of the runtime directory (runtime.py), where
the workload cannot replace it; it belongs to the workload's user only so that
nginx may open it. PID 1 still checks that what it opened is that FIFO.
"""

from __future__ import annotations

import os
import stat

from .. import log
from ..init.relay import MAX_PENDING, READ_SIZE, write_all
from . import routes

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Optional, Tuple

    from ..metrics.responses import ResponseCounts

# The labels of the health route (/ping), which the platform asks every few seconds.
PING = frozenset(route.label.encode("ascii") for route in routes.TABLE if route.entry == routes.HEALTH)


class AccessLogRelay:
    def __init__(self, path: str, owner: Optional[Tuple[int, int]] = None, as_json: bool = False,
                 counts: Optional["ResponseCounts"] = None, log_ping: bool = False,
                 per_model: Optional[Callable[[bytes, bytes, bytes], None]] = None):
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
        self._counts = counts
        self._log_ping = log_ping
        # A multi-model endpoint's lines carry two more fields, the model and the seconds
        # (multimodel/nginx_routes.py), handed to `per_model(model, status, seconds)`.
        self._per_model = per_model

    def pump(self) -> None:
        """Count and copy what nginx has written; called by PID 1's loop when the FIFO is readable."""
        while True:
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            self._take(data)
            if len(data) < READ_SIZE:
                return

    def _take(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_PENDING:  # no line of nginx's is this long: not worth holding
            lines.append(self._pending)
            self._pending = b""
        shown = [text for text in map(self._count, lines) if text]
        if not shown:
            return
        if self._as_json:
            out = "".join(log.json_line("nginx", "info", text.decode("utf-8", "replace")) + "\n" for text in shown)
            write_all(1, out.encode("utf-8"))
        else:
            write_all(1, b"\n".join(shown) + b"\n")

    def _count(self, line: bytes) -> bytes:
        """The part of `line` to print (empty: nothing), after counting its route and status."""
        fields = line.split(b" ", 4 if self._per_model else 2)
        if len(fields) < (5 if self._per_model else 3):
            return line
        if self._per_model:
            route, status, model, seconds, text = fields
            if model != b"-":
                self._per_model(model, status, seconds)
        else:
            route, status, text = fields
        if self._counts is not None:
            self._counts.add(route, status)
        if route in PING and not self._log_ping:
            return b""
        return text

    def close(self) -> None:
        self.pump()
        for fd in (self._keep_open, self.fd):
            try:
                os.close(fd)
            except OSError:
                pass
