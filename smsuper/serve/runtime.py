"""The private runtime directory: every file the serving processes share.

Two levels, so that root PID 1 never works inside a place the workload could
have rearranged (docs/faults.md, "Files: what each side may write"):

  ROOT/            PID 1's own: owned by root, mode 0711 (the workload may pass
                   through, not list, create, rename or delete). PID 1 writes
                   nginx.conf here, makes the access-log FIFO and the
                   workload's private HOME.
  ROOT/shared/     the servers': owned by the workload's user, mode 0700.
                   nginx, the gunicorn master and the workers write everything
                   else here (socket, pid file, temp files, readiness files,
                   metrics). Its place cannot be swapped (ROOT is root's), and
                   what PID 1 still does inside it goes through init/untrusted.py.

When smsuper is not root (the image's USER) there is one uid on both sides and
no boundary to keep. Nothing in the directory outlives the job.

Where: SMSUPER_RUNTIME_DIR when set, else a new directory under the first of
TMPDIR, /tmp, /dev/shm that the workload's user can reach (every parent
searchable for it). A place it cannot reach fails the job at once with the
path and the fix, instead of nginx and gunicorn failing in a restart loop.
"""

from __future__ import annotations

import os

from ..init import untrusted
from ..init.writable import unreachable

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List, Optional

    from ..init.privileges import Workload

NGINX_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
SHARED = "shared"
FALLBACK_PARENTS = ("/tmp", "/dev/shm")
SETTING = "SMSUPER_RUNTIME_DIR"


class RuntimeDirError(Exception):
    """No usable runtime directory; the message names the place and the fix."""


class RuntimeDir:
    # A plain class rather than a dataclass: PID 1 then carries no dataclasses (~1 MB of RSS).
    __slots__ = ("root",)

    def __init__(self, root: str):
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RuntimeDir) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"RuntimeDir({self.root!r})"

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _shared(self, name: str) -> str:
        return os.path.join(self.root, SHARED, name)

    # ---- PID 1's own (ROOT) ------------------------------------------------------------
    @property
    def nginx_conf(self) -> str:
        return self._path("nginx.conf")

    @property
    def access_log(self) -> str:
        """A FIFO: nginx writes its access log here and PID 1 relays it to stdout."""
        return self._path("access.log")

    # ---- the servers' (ROOT/shared) ------------------------------------------------------
    @property
    def shared(self) -> str:
        return self._path(SHARED)

    @property
    def nginx_pid(self) -> str:
        return self._shared("nginx.pid")

    def nginx_temp(self, kind: str) -> str:
        return self._shared(os.path.join("nginx-temp", kind))

    @property
    def socket(self) -> str:
        """gunicorn's unix socket, nginx's upstream."""
        return self._shared("gunicorn.sock")

    @property
    def ready_flag(self) -> str:
        """Exists while at least one worker has loaded the model: nginx answers /ping from it."""
        return self._shared("ready")

    @property
    def ready_dir(self) -> str:
        """One empty file per ready worker, named by its pid."""
        return self._shared("ready.d")

    @property
    def ready_lock(self) -> str:
        return self._shared("ready.lock")

    @property
    def ping_status(self) -> str:
        """The JSON body of a failing /ping: why the model is not ready."""
        return self._shared("ping-status.json")

    @property
    def metrics_dir(self) -> str:
        """prometheus_client's multiprocess files of the gunicorn processes (metrics/multiproc.py)."""
        return self._shared("metrics")

    @property
    def nginx_status(self) -> str:
        """A unix socket where nginx serves its stub_status to PID 1 alone."""
        return self._shared("nginx-status.sock")

    @property
    def elections(self) -> str:
        """Marker files created with O_EXCL so one process of many logs a shared failure."""
        return self._shared("logged.d")


def choose(configured: str, account: Workload, environ=os.environ) -> str:
    """The runtime directory to use: `configured` (made when missing) or a new one in a
    parent the workload can reach. Raises RuntimeDirError naming what was tried."""
    who = account.describe()
    if configured:
        root = os.path.abspath(configured)
        try:
            os.makedirs(root, mode=0o700, exist_ok=True)
        except OSError as error:
            raise RuntimeDirError(f"{SETTING}={configured}: cannot create it: {error.strerror or error}. "
                                  f"Name a writable directory, or leave {SETTING} unset") from None
        blocked = unreachable(root, account)  # its parents: PID 1 sets its own mode
        if blocked:
            raise RuntimeDirError(f"{SETTING}={configured} cannot be reached by {who}, who runs nginx and "
                                  f"gunicorn: {blocked}. Name a directory whose parents it can search, make "
                                  f"them searchable (chmod o+x), or leave {SETTING} unset")
        return root
    tried: List[str] = []
    tmpdir = environ.get("TMPDIR", "")
    candidates = ([("TMPDIR=" + tmpdir, tmpdir)] if tmpdir else []) + [(path, path) for path in FALLBACK_PARENTS]
    for label, parent in candidates:
        if not os.path.isdir(parent):
            tried.append(f"{label}: not a directory")
            continue
        blocked = unreachable(os.path.join(parent, "x"), account)
        if blocked:
            tried.append(f"{label}: {blocked}")
            continue
        try:
            root = _new_directory(parent, "smsuper-serve-")
        except OSError as error:
            tried.append(f"{label}: {error.strerror or error}")
            continue
        if tried:
            from .. import log

            log.info(f"runtime directory in {parent}, which {who} can reach; not in " + "; ".join(tried))
        return root
    raise RuntimeDirError(f"no place for the runtime directory that {who}, who runs nginx and gunicorn, can "
                          f"reach: " + "; ".join(tried) + f". Set {SETTING} to a directory whose parents it "
                          f"can search, or make TMPDIR's parents searchable (chmod o+x)")


def _new_directory(parent: str, prefix: str) -> str:
    """tempfile.mkdtemp's job (a fresh 0700 directory of a name nobody could have guessed) without
    tempfile, which costs PID 1 about 1 MB of RSS for this one call (shutil, random, weakref...)."""
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return os.path.abspath(path)
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused name for a new directory in {parent}")


def create(root: str, owner=None) -> RuntimeDir:
    """Lay out the tree in `root` (see the module's doc); `owner` (uid, gid) runs the servers.

    Anything an earlier run left in ROOT/shared is removed first: a reused
    SMSUPER_RUNTIME_DIR must not hand this run another's links or stale files.
    """
    root = os.path.abspath(root)
    os.makedirs(root, mode=0o700, exist_ok=True)
    runtime = RuntimeDir(root)
    if owner is not None:
        # Root's, and not writable for the workload: nothing in it can be swapped under PID 1.
        os.chown(root, os.geteuid(), os.getegid(), follow_symlinks=False)
        os.chmod(root, 0o711)
    else:
        os.chmod(root, 0o700)
    untrusted.remove_tree(runtime.shared)
    made = [runtime.shared, runtime.ready_dir, runtime.elections, runtime._shared("nginx-temp")]
    made += [runtime.nginx_temp(kind) for kind in NGINX_TEMP_KINDS]
    for directory in made:
        os.mkdir(directory, 0o700)
    # The readiness lock is opened by PID 1 and by the workers: PID 1 makes it now, for the workload's user.
    os.close(os.open(runtime.ready_lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    if owner is not None:
        # Nothing of the workload runs yet: these paths are still the ones just made.
        for path in made + [runtime.ready_lock]:
            os.chown(path, *owner, follow_symlinks=False)
    return runtime


def remove(runtime: RuntimeDir) -> None:
    untrusted.remove_tree(runtime.root)


def reachable_cwd(account: Workload, preferred: Optional[str], runtime: RuntimeDir) -> Optional[str]:
    """Where the servers start: smsuper's own cwd when the workload can be there (None: keep it),
    else `preferred` (the code directory), else the shared runtime directory."""
    try:
        here = os.getcwd()
    except OSError:
        here = ""
    if here and not unreachable(os.path.join(here, "x"), account):
        return None
    for place in (preferred, runtime.shared):
        if place and not unreachable(os.path.join(place, "x"), account):
            return place
    return runtime.shared
