"""Relay a child's pipe to one of our own fds, whole lines at a time.

All relayed output is written by PID 1's single loop, so a line of one process
is never glued to half a line of another. A chunk is cut after its last
newline or carriage return (tqdm's progress lines end in \\r and must show up
at once); the unterminated rest waits for its end, for EOF, or until it grows
past MAX_PENDING, whichever comes first. Reads are large and nothing is parsed
per line, which keeps the relay close to `cat` in throughput.
"""

from __future__ import annotations

import fcntl
import os
import select
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Optional

READ_SIZE = 1 << 17
MAX_PENDING = 1 << 16
_F_SETPIPE_SZ = 1031


def enlarge_pipe(fd: int, size: int = 1 << 20) -> None:
    """Bigger pipes mean fewer wake-ups when a child writes fast; best effort."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


def write_all(fd: int, data: bytes) -> None:
    """Write everything, even to a non-blocking fd someone else shares with us."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except OSError:
            return  # the reader is gone (EPIPE): dropping is all that is left
        view = view[written:]


class LineRelay:
    """Copies `source` to `target`, cutting only at line ends; calls `on_chunk` with what it wrote."""

    def __init__(self, source: int, target: int, on_chunk: Optional[Callable[[bytes], None]] = None):
        self.source = source
        self.target = target
        self.on_chunk = on_chunk
        self.pending = b""
        self.open = True
        os.set_blocking(source, False)

    def pump(self) -> bool:
        """Read what is there; return False at EOF (the owner then unregisters and closes)."""
        while True:
            try:
                data = os.read(self.source, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                data = b""
            if not data:
                self._flush_pending()
                return False
            self._take(data)
            if len(data) < READ_SIZE:
                return True

    def _take(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        cut = max(buffer.rfind(b"\n"), buffer.rfind(b"\r")) + 1
        if cut == 0 and len(buffer) <= MAX_PENDING:
            self.pending = buffer
            return
        if cut == 0:
            cut = len(buffer)
        self.pending = buffer[cut:]
        self._emit(buffer[:cut] if cut < len(buffer) else buffer)

    def _emit(self, chunk: bytes) -> None:
        write_all(self.target, chunk)
        if self.on_chunk is not None:
            try:
                self.on_chunk(chunk)
            except Exception:  # a hook must never stop the output
                pass

    def _flush_pending(self) -> None:
        if self.pending:
            chunk, self.pending = self.pending, b""
            self._emit(chunk)

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        self._flush_pending()
        try:
            os.close(self.source)
        except OSError:
            pass
