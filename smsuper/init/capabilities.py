"""Linux capability and no_new_privs calls that Python's os module lacks.

Used in a forked child just before exec (see spawn.py) and by the privilege
checks. Failures raise OSError so the child reports them instead of running
with more power than intended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Optional

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc: Optional[ctypes.CDLL] = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
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


def empty_bounding_set(cap_last: int) -> None:
    """Drop every capability from the bounding set (needs CAP_SETPCAP; a no-op without it)."""
    for cap in range(cap_last + 1):
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


def clear_process_sets() -> None:
    """Empty the effective, permitted and inheritable sets of this process."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _c().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    # Ambient capabilities are cleared when permitted is emptied.


def set_no_new_privs() -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


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
