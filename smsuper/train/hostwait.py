"""Wait until every training host's name resolves, with bounded backoff.

On the platform the other hosts' names may not resolve for a while after the
container starts. A script that connects to the master too early fails with
a confusing error, so the job waits first (SMSUPER_HOST_WAIT_TIMEOUT), saying
which names it is waiting for, and fails naming the ones that never resolved.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, List, Sequence

from .. import log


class HostsUnresolved(RuntimeError):
    pass


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except (socket.gaierror, UnicodeError, OSError):
        return False


def wait_for_hosts(hosts: Sequence[str], timeout: float,
                   resolves: Callable[[str], bool] = _resolves,
                   sleep: Callable[[float], None] = time.sleep,
                   clock: Callable[[], float] = time.monotonic,
                   first_delay: float = 0.1, max_delay: float = 5.0,
                   report_every: float = 30.0) -> None:
    """Return once every host resolves; raise HostsUnresolved after `timeout`."""
    deadline = clock() + timeout
    delay = first_delay
    waiting: List[str] = [host for host in hosts if not resolves(host)]
    next_report = clock()
    while waiting:
        now = clock()
        if now >= next_report:
            log.info(f"waiting for host names to resolve: {', '.join(waiting)} "
                     f"(up to {max(0.0, deadline - now):.0f} s more)")
            next_report = now + report_every
        if now >= deadline:
            raise HostsUnresolved(f"these training hosts did not resolve within {timeout:g} s "
                                  f"(SMSUPER_HOST_WAIT_TIMEOUT): {', '.join(waiting)}")
        sleep(min(delay, max(0.0, deadline - now)))
        delay = min(max_delay, delay * 2)
        waiting = [host for host in waiting if not resolves(host)]
