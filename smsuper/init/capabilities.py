"""Linux capability and no_new_privs calls that Python's os module lacks.

Used in a forked child just before exec (see spawn.py) and by the privilege
checks. Failures raise OSError so the child reports them instead of running
with more power than intended.
"""

from __future__ import annotations

import ctypes
import os
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Optional

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Capability numbers (linux/capability.h) that smsuper names.
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_SYS_ADMIN = 21


def mask(*caps: int) -> int:
    """The bit set of `caps`, as /proc/PID/status shows it (CapEff: ...)."""
    bits = 0
    for cap in caps:
        bits |= 1 << cap
    return bits

_libc: Optional[ctypes.CDLL] = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # the C library is already loaded; find_library would pull in subprocess
    return _libc


def _prctl(option: int, arg: int) -> None:
    if _c().prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def last_cap() -> int:
    """Highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def empty_bounding_set(cap_last: int, keep: int = 0) -> None:
    """Drop every capability but those in the mask `keep` from the bounding set
    (needs CAP_SETPCAP; a no-op without it)."""
    for cap in range(cap_last + 1):
        if keep & (1 << cap):
            continue
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError as failure:
            if failure.errno == 1 and not has_capability_setpcap():  # EPERM: we never held it
                return
            if failure.errno != 22:  # EINVAL: capability unknown to this kernel
                raise


def has_capability_setpcap() -> bool:
    return bool(effective_capabilities() & (1 << 8))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _capget() -> tuple:
    """(effective, permitted, inheritable) of this process, as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _c().capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capget: {os.strerror(err)}")
    return tuple(getattr(data[0], name) | (getattr(data[1], name) << 32)
                 for name in ("effective", "permitted", "inheritable"))


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for index, shift in ((0, 0), (1, 32)):
        data[index].effective = (effective >> shift) & 0xFFFFFFFF
        data[index].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[index].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if _c().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def clear_process_sets(keep: int = 0) -> None:
    """Reduce the effective, permitted and inheritable sets of this process to
    the mask `keep` (nothing by default). Ambient capabilities go with them."""
    effective, permitted, _ = _capget() if keep else (0, 0, 0)
    _capset(effective & keep, permitted & keep, permitted & keep)


def raise_inheritable(keep: int) -> None:
    """Put `keep` (held in the permitted set) into the inheritable set.

    For a uid-0 process exec grants bounding|inheritable, so this is how root
    keeps a few capabilities across an exec after its bounding set is emptied.
    Must happen before that emptying: the kernel refuses inheritable bits
    missing from the bounding set.
    """
    effective, permitted, inheritable = _capget()
    _capset(effective, permitted, inheritable | (permitted & keep))


def keep_only(keep: int, cap_last: int) -> None:
    """This process keeps only `keep`: bounding set first (needs CAP_SETPCAP
    while it still has it), then effective/permitted, inheritable emptied."""
    if has_capability_setpcap():
        empty_bounding_set(cap_last, keep)
    effective, permitted, inheritable = _capget()
    if (effective | permitted | inheritable) & ~keep:
        _capset(effective & keep, permitted & keep, 0)


def set_no_new_privs() -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(signum: int) -> bool:
    """Have the kernel send `signum` to this process when its parent exits (a gunicorn worker
    whose master was killed with SIGKILL). False when the kernel refused."""
    try:
        _prctl(PR_SET_PDEATHSIG, signum)
        return True
    except OSError:
        return False


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to us (what PID 1 gets for free)."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        return True
    except OSError:
        return False


def _status_field(name: str, pid: str = "self") -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def effective_capabilities(pid: str = "self") -> int:
    value = _status_field("CapEff", pid)
    return int(value, 16) if value else 0


def bounding_capabilities(pid: str = "self") -> int:
    value = _status_field("CapBnd", pid)
    return int(value, 16) if value else 0


def seccomp_mode(pid: str = "self") -> int:
    value = _status_field("Seccomp", pid)
    return int(value) if value.isdigit() else 0
