"""Every timeout of the serving stack, in one table, so none can disagree with another.

Two numbers are settings: the request timeout T (SAGEMAKER_MODEL_SERVER_TIMEOUT) and the
stop grace period G (SMSUPER_GRACE_PERIOD: PID 1 SIGKILLs whatever is left after G). The
others are fixed here, keep-alives included. `ROWS` is the table as people read it (the
README's "Timeouts" table is rendered from it, and tests/test_readme.py keeps the two equal);
the functions and constants below it are the same table as the code uses it, row by row.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Tuple

# (what, value, why), in the order a request meets them, then the stop.
ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("nginx `keepalive_timeout` (clients)", "75 s", "nginx's own default: an idle client connection costs it little"),
    ("nginx `proxy_connect_timeout`", "5 s",
     "the workers' socket is local: a connect that takes longer means no worker is listening"),
    ("nginx `proxy_read_timeout` / `proxy_send_timeout`", "T",
     "a prediction slower than T gets one 504 with a JSON body"),
    ("gunicorn `timeout`", "T + 5",
     "only then is a stuck sync worker killed (and replaced): the client already has its 504, never a 502 "
     "from the kill"),
    ("worker heartbeat while the model loads", "(T + 5) / 4, at least 1 s",
     "a model that loads for longer than T is not killed as stuck"),
    ("nginx upstream `keepalive_timeout`", "5 s",
     "nginx closes an idle connection to a worker first; short, because a retiring worker waits for it"),
    ("gunicorn `keepalive`", "5 s + 15 s",
     "longer than nginx's, so a worker never closes a connection nginx is about to reuse (a POST sent into "
     "a closing connection would be a 502)"),
    ("a busy keep-alive worker hands its idle connections over", "after 50 ms of one request",
     "no request nginx sends on them waits behind a long prediction"),
    ("a worker's guard takes its connections back", "1 s without a heartbeat (beaten every 0.2 s)",
     "a stopped worker, or one held in a native call, keeps no request waiting"),
    ("a taken-back connection nginx has not closed", "10 s", "then the guard shuts it down itself"),
    ("nginx `worker_shutdown_timeout`", "G - 5, at least 1 s", "how long nginx drains on SIGTERM"),
    ("bidirectional streams after the stop", "G - 7, at least 0.5 s",
     "open streams finish, then close with 1001, before nginx (which holds them) gives up"),
    ("gunicorn drain (serving until nginx has exited)", "G - 4",
     "requests nginx still holds are answered, not reset"),
    ("gunicorn `graceful_timeout`", "what is left of G - 2, at least 1 s",
     "workers finish and exit before PID 1's SIGKILL at G"),
)

CLIENT_KEEPALIVE = 75
UPSTREAM_CONNECT = 5
WORKER_TIMEOUT_MARGIN = 5  # seconds gunicorn waits beyond nginx's 504 before killing a stuck worker
UPSTREAM_KEEPALIVE = 5
WORKER_KEEPALIVE = UPSTREAM_KEEPALIVE + 15
HAND_OVER_AFTER = 0.05  # worker/keepalive_worker.py
GUARD_STUCK_AFTER = 1.0  # worker/rescue.py
GUARD_HEARTBEAT = 0.2
GUARD_TAKEN_BACK_LIMIT = 10.0


def worker_timeout(request_timeout: int) -> int:
    return request_timeout + WORKER_TIMEOUT_MARGIN


def heartbeat_interval(request_timeout: int) -> float:
    return max(1.0, worker_timeout(request_timeout) / 4)


def nginx_shutdown(grace_period: float) -> float:
    return max(1.0, grace_period - 5)


def stream_stop(grace_period: float) -> float:
    """Seconds a bidirectional stream may still run after the stop (worker/websocket.py)."""
    return max(0.5, nginx_shutdown(grace_period) - 2)


def drain_wait(grace_period: float) -> float:
    """How long the gunicorn master keeps serving after SIGTERM while nginx drains."""
    return max(0.0, grace_period - 4)


def stop_deadline(grace_period: float) -> float:
    """Seconds after SIGTERM by which gunicorn must be gone (PID 1 kills at G)."""
    return max(1.0, grace_period - 2)


def markdown_table() -> str:
    rows = ["| | value | why |", "|---|---|---|"]
    rows += [f"| {what} | {value} | {why} |" for what, value, why in ROWS]
    return "\n".join(rows)
