"""The private runtime directory: every file the serving processes share.

PID 1 creates it (owned by the workload's user, mode 0700) before starting
anything; nginx, the gunicorn master and the workers all find their files by
these names. Nothing in it outlives the job.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Tuple

NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass(frozen=True)
class RuntimeDir:
    root: str

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def nginx_conf(self) -> str:
        return self._path("nginx.conf")

    @property
    def nginx_pid(self) -> str:
        return self._path("nginx.pid")

    def nginx_temp(self, kind: str) -> str:
        return self._path(os.path.join("nginx-temp", kind))

    @property
    def socket(self) -> str:
        """gunicorn's unix socket, nginx's upstream."""
        return self._path("gunicorn.sock")

    @property
    def access_log(self) -> str:
        """A FIFO: nginx writes its access log here and PID 1 relays it to stdout."""
        return self._path("access.log")

    @property
    def ready_flag(self) -> str:
        """Exists while at least one worker has loaded the model: nginx answers /ping from it."""
        return self._path("ready")

    @property
    def ready_dir(self) -> str:
        """One empty file per ready worker, named by its pid."""
        return self._path("ready.d")

    @property
    def ready_lock(self) -> str:
        return self._path("ready.lock")

    @property
    def ping_status(self) -> str:
        """The JSON body of a failing /ping: why the model is not ready."""
        return self._path("ping-status.json")

    @property
    def metrics_dir(self) -> str:
        """prometheus_client's multiprocess files of the gunicorn processes (metrics/multiproc.py)."""
        return self._path("metrics")

    @property
    def nginx_status(self) -> str:
        """A unix socket where nginx serves its stub_status to PID 1 alone."""
        return self._path("nginx-status.sock")

    @property
    def elections(self) -> str:
        """Marker files created with O_EXCL so one process of many logs a shared failure."""
        return self._path("logged.d")


def create(path: str = "", owner: Optional[Tuple[int, int]] = None) -> RuntimeDir:
    """Make the directory tree; `owner` (uid, gid) is who the workloads run as."""
    if path:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        root = os.path.abspath(path)
    else:
        root = tempfile.mkdtemp(prefix="smsuper-serve-")
    runtime = RuntimeDir(root)
    made = [root, runtime.ready_dir, runtime.elections, os.path.join(root, "nginx-temp")]
    made += [runtime.nginx_temp(kind) for kind in NGINX_TEMP_KINDS]
    for directory in made:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    # The readiness lock is opened by PID 1 and by the workers: whoever creates it
    # first owns it (mode 0600), so PID 1 makes it now, for the workload's user.
    os.close(os.open(runtime.ready_lock, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    if owner is not None:
        for path in made + [runtime.ready_lock]:
            os.chown(path, *owner)
    return runtime
