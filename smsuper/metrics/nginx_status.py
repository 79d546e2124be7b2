"""nginx's stub_status figures, fetched by PID 1 at scrape time.

nginx serves stub_status on a unix socket in the runtime directory (see
serve/nginx.py), never on a TCP port: nothing outside the container can
reach it and no port is taken. nginx answers it from its own event loop
without touching gunicorn, so the answer takes well under a millisecond
even when every worker is busy; the short timeout only bounds how long
PID 1's loop can wait for an nginx that is stopped or gone.

The socket's directory is the workload's: PID 1 connects only to the socket
found under that name (opened O_PATH | O_NOFOLLOW, then reached through
/proc/self/fd, so a link planted there leads nowhere else), and reads at most
MAX_ANSWER bytes within TIMEOUT in all, whatever answers.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time

from .exposition import Family, counter, gauge

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Optional

TIMEOUT = 0.25
MAX_ANSWER = 4096  # a stub_status page is about 100 bytes
PATH = "/stub_status"

_ACTIVE = re.compile(r"Active connections:\s*(\d+)")
_TOTALS = re.compile(r"accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)")
_STATES = re.compile(r"Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)")


def parse(text: str) -> Optional[Dict[str, int]]:
    """The figures of a stub_status page, or None when it is not one."""
    active, totals, states = _ACTIVE.search(text), _TOTALS.search(text), _STATES.search(text)
    if not (active and totals and states):
        return None
    return {
        "active": int(active.group(1)),
        "accepted": int(totals.group(1)),
        "handled": int(totals.group(2)),
        "requests": int(totals.group(3)),
        "reading": int(states.group(1)),
        "writing": int(states.group(2)),
        "waiting": int(states.group(3)),
    }


def fetch(socket_path: str, timeout: float = TIMEOUT) -> Optional[Dict[str, int]]:
    """GET /stub_status over the unix socket; None when nginx does not answer in time."""
    deadline = time.monotonic() + timeout
    try:
        path_fd = os.open(socket_path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISSOCK(os.fstat(path_fd).st_mode):
            return None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(f"/proc/self/fd/{path_fd}")
            sock.sendall(f"GET {PATH} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode("ascii"))
            chunks = []
            received = 0
            while received < MAX_ANSWER:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None  # a trickle of bytes must not hold PID 1's loop
                sock.settimeout(left)
                chunk = sock.recv(MAX_ANSWER - received)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
    except OSError:  # socket.timeout is an OSError too
        return None
    finally:
        os.close(path_fd)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or status_line[1] != b"200":
        return None
    return parse(body.decode("latin-1"))


def collector(socket_path: str):
    def collect() -> List[Family]:
        figures = fetch(socket_path)
        up = gauge("nginx_up", "1 when nginx answered its stub_status at this scrape, else 0.")
        up.add(1 if figures else 0)
        if not figures:
            return [up]
        active = gauge("nginx_connections_active", "nginx's open client connections.")
        active.add(figures["active"])
        connections = gauge("nginx_connections", "nginx's open client connections by state: reading a request, "
                                                 "writing a response, or idle keep-alive (waiting).")
        for state in ("reading", "writing", "waiting"):
            connections.add(figures[state], state=state)
        accepted = counter("nginx_connections_accepted", "Client connections nginx has accepted.")
        accepted.add(figures["accepted"])
        handled = counter("nginx_connections_handled", "Client connections nginx has handled (below accepted "
                                                       "only when a limit was hit).")
        handled.add(figures["handled"])
        requests = counter("nginx_http_requests", "HTTP requests nginx has received (including /ping).")
        requests.add(figures["requests"])
        return [up, active, connections, accepted, handled, requests]

    return collect
