"""Who the workloads run as, and what PID 1 itself keeps.

Generic init machinery: nothing here knows about SageMaker. The jobs call, in
this order:

1. `refuse_privileged_container(allow)`: a container holding CAP_SYS_ADMIN
   (or every capability) without a seccomp filter is what `--privileged`
   gives; smsuper refuses to start there unless SMSUPER_ALLOW_PRIVILEGED is set.
2. `workload(spec, explicit)`: the account of SMSUPER_USER as Credentials the
   spawner applies in each child before exec (bounding set emptied,
   supplementary groups, gid, uid, capabilities cleared, no_new_privs). When
   smsuper is not root (the image's USER) there is nobody to switch to: the
   children run as smsuper's own uid, still with no_new_privs.
3. the job makes its writable places (writable.py), then `with_home()` gives
   the account a HOME it can write.
4. children start; then `restrict_init()` leaves PID 1 only the capabilities
   it still needs (INIT_KEEPS).

Why PID 1 stays root: it must signal and reap workloads of another uid
(CAP_KILL: uid 0 alone does not allow kill() across uids), restart nginx and
gunicorn as the workload's user (CAP_SETUID, CAP_SETGID, and CAP_SETPCAP to
empty each child's bounding set), hand the relay pipes and the access-log
FIFO of a restarted server to that user (CAP_CHOWN), and write its own files
into directories that now belong to the user: output/failure, readiness files
in the serving runtime directory (CAP_DAC_OVERRIDE). Everything else (mount,
ptrace, raw sockets, mknod, chroot, setfcap, ...) leaves its permitted and
bounding sets for good.

Memory matters at PID 1: no dataclasses, typing or tempfile here.
"""

from __future__ import annotations

import os
import stat

from .. import log
from . import capabilities
from .spawn import Credentials

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, Mapping, Optional, Tuple

ALLOW_SETTING = "SMSUPER_ALLOW_PRIVILEGED"
USER_SETTING = "SMSUPER_USER"
DEFAULT_USER = "nobody"
NOBODY_ID = 65534  # nobody/nogroup on Debian, Ubuntu, Alpine, RHEL...

INIT_KEEPS = capabilities.mask(
    capabilities.CAP_KILL,
    capabilities.CAP_SETUID,
    capabilities.CAP_SETGID,
    capabilities.CAP_SETPCAP,
    capabilities.CAP_CHOWN,
    capabilities.CAP_DAC_OVERRIDE,
)

# Files that container engines leave in every container they start.
_CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
_CGROUP_WORDS = ("docker", "kubepods", "containerd", "libpod", "lxc")


class PrivilegeError(Exception):
    """smsuper must not start; the message says why and what to change."""


# ---- privileged containers ------------------------------------------------------

def in_container() -> bool:
    """Best effort: PID 1 of a PID namespace, or a container engine's marks."""
    if os.getpid() == 1 or os.environ.get("container"):
        return True
    if any(os.path.exists(marker) for marker in _CONTAINER_MARKERS):
        return True
    try:
        with open("/proc/1/cgroup") as handle:
            text = handle.read()
    except OSError:
        return False
    return any(word in text for word in _CGROUP_WORDS)


def privileged_container() -> Optional[str]:
    """What makes this container privileged, or None.

    Both the effective and the bounding set count: a non-root smsuper in a
    privileged container holds nothing itself, but any setuid-root program
    there would get back every capability of the bounding set.
    """
    if not in_container() or capabilities.seccomp_mode() != 0:
        return None
    held = capabilities.effective_capabilities() | capabilities.bounding_capabilities()
    everything = capabilities.mask(*range(capabilities.last_cap() + 1))
    if held & everything == everything:
        return "every Linux capability and no seccomp filter"
    if held & capabilities.mask(capabilities.CAP_SYS_ADMIN):
        return "CAP_SYS_ADMIN and no seccomp filter"
    return None


def refuse_privileged_container(allow: bool) -> None:
    """Raise PrivilegeError in a privileged container unless `allow`."""
    reason = privileged_container()
    if reason is None:
        return
    if allow:
        # debug: whoever set the override knows; one more line at every start would be noise.
        log.debug(f"this container is privileged ({reason}); starting anyway because {ALLOW_SETTING} is set")
        return
    raise PrivilegeError(
        f"refusing to start: this container is privileged ({reason}), as `docker run --privileged` "
        f"makes it. SageMaker never runs containers privileged, and a model server or training script "
        f"must not hold powers that reach the host (mounting its disks, loading kernel modules). "
        f"Run the container without --privileged, or set {ALLOW_SETTING}=1 to start anyway.")


def start_checks(allow_privileged: bool, user: str, environ: Mapping[str, str]) -> Workload:
    """Every job's first step: refuse a privileged container, resolve the account.

    `user` is the parsed SMSUPER_USER; `environ` tells whether it was set at all.
    Raises PrivilegeError.
    """
    refuse_privileged_container(allow_privileged)
    return workload(user, bool(environ.get(USER_SETTING, "").strip()))


# ---- the workload's account ------------------------------------------------------

class Workload:
    """The account every child runs as, and its environment."""

    __slots__ = ("credentials", "name", "home", "switches", "private_home")

    def __init__(self, credentials: Credentials, name: str, home: str, switches: bool,
                 private_home: Optional[str] = None):
        self.credentials = credentials
        self.name = name  # USER and LOGNAME
        self.home = home
        # True when smsuper is root and changes the uid of its children: only
        # then can it (and must it) hand directories over with chown.
        self.switches = switches
        self.private_home = private_home  # a HOME smsuper made and removes at the end

    @property
    def owner(self) -> Optional[Tuple[int, int]]:
        """(uid, gid) to chown the workload's places to, or None when smsuper cannot."""
        return (self.credentials.uid, self.credentials.gid) if self.switches else None

    def describe(self) -> str:
        c = self.credentials
        return f"{self.name} (uid {c.uid}, gid {c.gid})"

    def environ(self, base: Mapping[str, str]) -> Dict[str, str]:
        """`base` with HOME, USER and LOGNAME of this account."""
        env = dict(base)
        env.update(HOME=self.home, USER=self.name, LOGNAME=self.name)
        return env

    def with_home(self, parent: Optional[str] = None) -> "Workload":
        """This account with a HOME it can write: its own, else a private one
        made in `parent` (default: TMPDIR, or /tmp when the account cannot reach
        TMPDIR), removed by cleanup().

        `parent` must be a directory the workload cannot write, or a sticky one
        like /tmp: the workload can then not rename its HOME away and put a link
        in its place for cleanup() to follow."""
        if _writable_home(self.home, self.credentials.uid, self.switches):
            return self
        if not parent:
            from .writable import unreachable

            parent = os.environ.get("TMPDIR") or "/tmp"
            if unreachable(os.path.join(parent, "x"), self):
                parent = "/tmp"
        path = os.path.join(parent, f"smsuper-home-{self.credentials.uid}-{os.urandom(4).hex()}")
        try:
            os.mkdir(path, 0o700)  # fails if it exists: nobody can plant it for us
            if self.owner is not None:
                os.chown(path, *self.owner, follow_symlinks=False)
        except OSError as error:
            log.warning(f"HOME for {self.describe()} is {self.home or '(unset)'}, which it cannot write, and "
                        f"no private HOME could be made in {parent}: {error.strerror or error}; "
                        f"programs that write to ~ will fail")
            return self
        log.debug(f"HOME for {self.describe()} is {path} ({self.home or 'no home'} is not writable for it)")
        return Workload(self.credentials, self.name, path, self.switches, path)

    def cleanup(self) -> None:
        if self.private_home:
            _remove_tree(self.private_home)
            self.private_home = None


def workload(spec: str, explicit: bool) -> Workload:
    """The account SMSUPER_USER names (`explicit`: the variable was set).

    Raises PrivilegeError for a name this image does not know.
    """
    if os.geteuid() != 0:
        return _as_this_process(spec, explicit)
    uid, gid, groups, name, home = _account(spec)
    if uid == 0:
        log.warning(f"{USER_SETTING}={spec}: workloads keep uid 0 (discouraged); they still start with an "
                    f"empty capability bounding set and cannot gain new privileges")
    credentials = Credentials(uid, gid, groups, drop_capabilities=True, no_new_privs=True)
    return Workload(credentials, name, home, switches=True)


def _as_this_process(spec: str, explicit: bool) -> Workload:
    uid, gid = os.getuid(), os.getgid()
    name, home = _passwd_name_home(uid)
    if explicit and spec not in (name, str(uid), f"{uid}:{gid}"):
        log.warning(f"{USER_SETTING}={spec} is ignored: smsuper runs as uid {uid} (the image's USER), not root, "
                    f"so it cannot switch users; workloads run as uid {uid}")
    # Not root: no user switch, but the children still get no_new_privs and no capabilities.
    credentials = Credentials(uid, gid, tuple(os.getgroups()), drop_capabilities=True, no_new_privs=True)
    return Workload(credentials, name, os.environ.get("HOME") or home, switches=False)


def _passwd_name_home(uid: int) -> Tuple[str, str]:
    import pwd

    try:
        entry = pwd.getpwuid(uid)
        return entry.pw_name, entry.pw_dir
    except KeyError:
        return str(uid), ""


def _account(spec: str) -> Tuple[int, int, Tuple[int, ...], str, str]:
    """(uid, gid, supplementary groups, name, home) of `name`, `uid` or `user:group`."""
    import grp
    import pwd

    user, _, group = spec.strip().partition(":")
    entry = None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit() and user != DEFAULT_USER:
            raise PrivilegeError(f"{USER_SETTING}={spec}: this image has no user {user!r} in /etc/passwd; "
                                 f"name an existing user, or give a uid or uid:gid") from None
    if entry is not None:
        uid, gid, name, home = entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir
    elif user.isdigit():
        # A uid the image does not know: its own number as the group, never root's group.
        uid, gid, name, home = int(user), int(user), user, ""
    else:
        log.info(f"this image has no user {DEFAULT_USER!r}: workloads run as uid:gid {NOBODY_ID}:{NOBODY_ID}")
        uid, gid, name, home = NOBODY_ID, NOBODY_ID, DEFAULT_USER, ""
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"{USER_SETTING}={spec}: this image has no group {group!r} in /etc/group; "
                                 f"give a gid instead") from None
    groups: Tuple[int, ...] = (gid,)
    if entry is not None:
        try:
            groups = tuple(os.getgrouplist(entry.pw_name, gid))
        except OSError:
            pass
    return uid, gid, groups, name, home


def _writable_home(home: str, uid: int, switches: bool) -> bool:
    if not home or not os.path.isabs(home):
        return False
    try:
        info = os.stat(home)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if not switches:
        return os.access(home, os.W_OK | os.X_OK)
    return info.st_uid == uid and info.st_mode & 0o300 == 0o300


def _remove_tree(path: str) -> None:
    """The workload wrote in it as it pleased: removed through directory fds, never
    following a link it planted there (init/untrusted.py)."""
    from .untrusted import remove_tree

    remove_tree(path)


# ---- output streams and PID 1 itself ----------------------------------------------

def share_std_streams(account: Workload) -> None:
    """Let children writing straight to our stdout/stderr also reopen them by path.

    A pipe (what container engines give as stdout) opened through
    /dev/stdout or /proc/self/fd/1 checks its mode 0600 and owner, which is
    root. Pipes only: a file or a terminal behind fd 1 is left as it is.
    """
    if account.owner is None:
        return
    uid, gid = account.owner
    for fd in (0, 1, 2):
        try:
            info = os.fstat(fd)
            if stat.S_ISFIFO(info.st_mode) and info.st_uid != uid:
                os.fchown(fd, uid, gid)
        except OSError:
            pass


def restrict_init() -> None:
    """PID 1 keeps INIT_KEEPS (see the module's doc) and nothing else, for good."""
    if os.geteuid() != 0:
        return
    try:
        capabilities.keep_only(INIT_KEEPS, capabilities.last_cap())
    except OSError as error:
        log.warning(f"could not drop PID 1's unneeded capabilities: {error}")
        return
    log.debug(f"PID 1 keeps capabilities {capabilities.effective_capabilities():#x}")
