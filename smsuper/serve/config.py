"""The serve job's settings, resolved once, and every timeout derived from them.

All timeouts of the stack come from two numbers, so they can never disagree:
the request timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT, T) and the stop grace
period (SMSUPER_GRACE_PERIOD, G: PID 1 SIGKILLs whatever is left after G).

  nginx proxy_read/send_timeout   T       a prediction slower than T gets ONE clear 504 from nginx
  gunicorn timeout                T + 5   only then is the stuck sync worker killed (after the 504
                                          went out), so the client never sees a 502 from the kill
  nginx worker_shutdown_timeout   G - 5   nginx drains in-flight requests, then gives up
  bidirectional streams           G - 7   after the stop they finish, then close with 1001 (worker/websocket.py)
  gunicorn drain deadline         G - 4   the master keeps serving until nginx has exited
  gunicorn graceful_timeout       <= G - 2  then workers finish and exit, before PID 1's SIGKILL
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from .. import settings

DEFAULT_GRACE_PERIOD = 25.0  # inside the platform's 30 s between SIGTERM and SIGKILL for endpoints
WORKER_TIMEOUT_MARGIN = 5  # seconds gunicorn waits beyond nginx's 504 before killing a stuck worker


def default_workers() -> int:
    """The CPUs this container may use (affinity and cgroup quota), not the host's."""
    from ..sagemaker.resources import cpu_count

    return cpu_count()


@dataclass(frozen=True)
class ServeConfig:
    port: int
    workers: int
    threads: int
    timeout: int  # seconds a request may take (T)
    max_payload_mb: int
    default_accept: str
    json_allow_nan: bool  # the default JSON codecs read and write NaN/Infinity (Python's dialect)
    preload: bool
    max_requests: int
    log_ping: bool
    app: Optional[str]  # style B: module:attr of the user's WSGI app
    batch_strategy: str
    max_concurrent_transforms: int
    grace_period: float  # G
    base_dir: str
    program: str
    submit_directory: str
    log_level: str
    streams_per_worker: int = 32  # SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER
    stream_timeout: float = 3600.0  # seconds a streamed answer may last in all (0: no bound)
    sessions: bool = False  # stateful sessions (worker/sessions.py)
    sessions_expiration: int = 1200
    batch_size: int = 1  # server-side batching (worker/batching.py); 1 is off
    batch_delay: float = 0.01  # seconds a request waits to fill its batch

    # ---- derived ----------------------------------------------------------------
    @property
    def batching(self) -> bool:
        """Batching applies to the handler functions only: a user's WSGI app serves its own way."""
        return self.batch_size > 1 and not self.app

    @property
    def worker_threads(self) -> int:
        """A worker needs as many request threads as a batch has requests to ever fill one."""
        return max(self.threads, self.batch_size) if self.batching else self.threads

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base_dir, "model")

    @property
    def worker_timeout(self) -> int:
        return self.timeout + WORKER_TIMEOUT_MARGIN

    @property
    def nginx_shutdown_timeout(self) -> float:
        return max(1.0, self.grace_period - 5)

    @property
    def stream_stop_deadline(self) -> float:
        """Seconds a bidirectional stream may still run after the stop: closed with 1001 by then,
        before nginx (which holds it) gives up at nginx_shutdown_timeout."""
        return max(0.5, self.nginx_shutdown_timeout - 2)

    @property
    def drain_wait(self) -> float:
        """How long the gunicorn master keeps serving after SIGTERM while nginx drains."""
        return max(0.0, self.grace_period - 4)

    @property
    def stop_deadline(self) -> float:
        """Seconds after SIGTERM by which gunicorn must be gone (PID 1 kills at G)."""
        return max(1.0, self.grace_period - 2)

    def execution_parameters(self) -> dict:
        return {
            "MaxConcurrentTransforms": self.max_concurrent_transforms,
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": self.max_payload_mb,
        }


def resolve(environ: Optional[Mapping[str, str]] = None, workers: Optional[int] = None) -> ServeConfig:
    """Read every serving setting; raises settings.SettingError naming a bad variable."""

    def get(name: str):
        return settings.value(name, environ)

    count = workers or get("SAGEMAKER_MODEL_SERVER_WORKERS") or default_workers()
    grace = get("SMSUPER_GRACE_PERIOD")
    return ServeConfig(
        port=get("SAGEMAKER_BIND_TO_PORT"),
        workers=count,
        threads=get("SMSUPER_WORKER_THREADS"),
        timeout=get("SAGEMAKER_MODEL_SERVER_TIMEOUT"),
        max_payload_mb=get("SAGEMAKER_MAX_PAYLOAD_IN_MB"),
        default_accept=get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"),
        json_allow_nan=get("SMSUPER_JSON_ALLOW_NAN"),
        preload=get("SMSUPER_PRELOAD_MODEL"),
        max_requests=get("SMSUPER_MAX_REQUESTS"),
        log_ping=get("SMSUPER_LOG_PING"),
        app=get("SMSUPER_APP"),
        batch_strategy=get("SAGEMAKER_BATCH_STRATEGY"),
        max_concurrent_transforms=get("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS") or count,
        grace_period=DEFAULT_GRACE_PERIOD if grace is None else grace,
        base_dir=get("SAGEMAKER_BASE_DIR"),
        program=get("SAGEMAKER_PROGRAM") or "inference.py",
        submit_directory=get("SAGEMAKER_SUBMIT_DIRECTORY"),
        log_level=get("SMSUPER_LOG_LEVEL") or "info",  # None: the default of train and serve
        streams_per_worker=get("SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER"),
        stream_timeout=get("SMSUPER_STREAM_TIMEOUT"),
        sessions=get("SAGEMAKER_ENABLE_STATEFUL_SESSIONS"),
        sessions_expiration=get("SAGEMAKER_SESSIONS_EXPIRATION"),
        batch_size=get("SMSUPER_BATCH_SIZE"),
        batch_delay=get("SMSUPER_BATCH_DELAY_MS") / 1000.0,
    )
