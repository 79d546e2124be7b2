"""serve, in PID 1: whether /ping passes and why not, and the limits the job runs with.

Alerts and dashboards need both as series of their own. "Not ready" must not
depend on somebody calling /ping (the platform does, Prometheus does not),
and "latency near the timeout" or "every worker busy" must compare with the
limits this container was started with, not a number copied into a rule.

Readiness is read at scrape time from the same files nginx answers /ping
from (serve/readiness.py): the `ready` flag, one marker per ready worker,
and ping-status.json for the reason. The runtime directory belongs to the
workload's user, so PID 1 opens that file without following a link and
without blocking (a FIFO put in its place cannot hang the loop), reads at
most MAX_STATUS_BYTES, and only a known status becomes a label value.
"""

from __future__ import annotations

import json
import os
import stat

from .exposition import Family, gauge

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List

# What ping-status.json may say (serve/job.py, serve/worker/service.py), plus `ready` when the flag is up.
STATUSES = ("ready", "starting", "loading", "restarting", "failed")
MAX_STATUS_BYTES = 65536


def _status_file(path: str) -> str:
    """The `status` of ping-status.json; "" when it is missing, odd or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        text = os.read(fd, MAX_STATUS_BYTES)
    except OSError:
        return ""
    finally:
        os.close(fd)
    try:
        status = json.loads(text.decode("utf-8", "replace")).get("status", "")
    except (ValueError, AttributeError):
        return ""
    return status if status in STATUSES else ""


def _ready_workers(directory: str) -> int:
    try:
        return len(os.listdir(directory))
    except OSError:
        return 0


def collector(runtime, config):
    """`runtime`: the job's serve.runtime.RuntimeDir; `config`: its serve.config.ServeConfig."""

    def collect() -> List[Family]:
        ready = os.path.exists(runtime.ready_flag)
        up = gauge("ready", "1 while /ping answers 200 (a worker has loaded the model), else 0.")
        up.add(1 if ready else 0)
        workers_ready = gauge("ready_workers", "gunicorn workers that have loaded the model and can serve.")
        workers_ready.add(_ready_workers(runtime.ready_dir))
        current = "ready" if ready else (_status_file(runtime.ping_status) or "starting")
        status = gauge("serving_status", "1 for what /ping says now (ready, or why not: starting, loading, "
                                         "restarting, failed), 0 for the others.")
        for name in STATUSES:
            status.add(1 if name == current else 0, status=name)
        workers = gauge("model_server_workers", "gunicorn workers this job runs (SAGEMAKER_MODEL_SERVER_WORKERS).")
        workers.add(config.workers)
        threads = gauge("model_server_worker_threads", "Requests each worker handles at once "
                                                       "(SMSUPER_WORKER_THREADS, or SMSUPER_BATCH_SIZE if larger).")
        threads.add(config.worker_threads)
        timeout = gauge("model_server_timeout_seconds", "Seconds a request may take before nginx answers 504 "
                                                        "(SAGEMAKER_MODEL_SERVER_TIMEOUT).")
        timeout.add(config.timeout)
        payload = gauge("max_payload_bytes", "Largest request body nginx accepts; larger is a 413 "
                                             "(SAGEMAKER_MAX_PAYLOAD_IN_MB).")
        payload.add(config.max_payload_mb * 1024 * 1024)
        return [up, workers_ready, status, workers, threads, timeout, payload]

    return collect
