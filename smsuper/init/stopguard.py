"""A stop before the training program starts.

While smsuper reads configs, waits for host names or extracts code, no child
exists yet and PID 1 has no default signal actions: without a handler a
`docker stop` would be ignored until SIGKILL. Inside this guard SIGTERM and
SIGINT raise `StopRequested` wherever the job is, so it fails at once with
a clear reason. The supervisor is created inside the guard, so its handlers
take over without a gap in which a signal would be lost.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterator

GUARDED = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, _frame) -> None:
    raise StopRequested(signum)


@contextmanager
def stop_guard() -> Iterator[None]:
    previous = {signum: signal.signal(signum, _raise) for signum in GUARDED}
    # A launcher may have left them blocked: a stop would then wait for the supervisor.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GUARDED)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # The supervisor, created as the guard's last step, installs its
            # own handlers: those stay.
            if signal.getsignal(signum) is _raise:
                signal.signal(signum, handler)
