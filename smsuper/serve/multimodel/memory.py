"""Memory: the container's limit, what is in use, and what a model's processes take (PID 1).

The limit is the memory cgroup's (v2 `memory.max`, v1 `memory.limit_in_bytes`, of
PID 1's own cgroup), or the host's memory when there is none or it is larger.
What is in use is the cgroup's usage without its inactive file cache (the working
set, which the kernel cannot simply drop), or, without a cgroup limit, the
host's memory minus MemAvailable. A model's memory is the proportional set size
(PSS) of its processes summed, so pages its workers share with their master
(the model, loaded once before the fork) count once, not once per worker.

All of these are kernel files: nothing here reads a path the workload could swap.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Iterable, Optional, Tuple

CGROUP_ROOT = "/sys/fs/cgroup"
UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge number (9223372036854771712)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read(65536)
    except OSError:
        return ""


def _meminfo() -> Dict[str, int]:
    found = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            found[key] = int(parts[0]) * 1024
    return found


def _stat_value(text: str, key: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


def _own_cgroup() -> Tuple[Optional[str], Optional[str]]:
    """(v2 directory, v1 memory directory) of PID 1's cgroup, where they exist."""
    v2 = v1 = None
    for line in _read("/proc/self/cgroup").splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            for base in (CGROUP_ROOT, os.path.join(CGROUP_ROOT, "unified")):
                candidate = os.path.join(base, path.lstrip("/"))
                if os.path.exists(os.path.join(candidate, "memory.max")):
                    v2 = candidate
                    break
        elif "memory" in controllers.split(","):
            candidate = os.path.join(CGROUP_ROOT, "memory", path.lstrip("/"))
            if os.path.exists(os.path.join(candidate, "memory.limit_in_bytes")):
                v1 = candidate
    return v2, v1


class Budget:
    """The limit and the use, read fresh at each question (a load is rare; the files are cheap)."""

    def cgroup(self) -> Tuple[Optional[int], int]:
        """(limit or None, working set) of the memory cgroup, if it has a limit."""
        v2, v1 = _own_cgroup()
        if v2:
            raw = _read(os.path.join(v2, "memory.max")).strip()
            if raw.isdigit() and int(raw) < UNLIMITED:
                current = _read(os.path.join(v2, "memory.current")).strip()
                inactive = _stat_value(_read(os.path.join(v2, "memory.stat")), "inactive_file")
                return int(raw), max(0, int(current or 0) - inactive)
        if v1:
            raw = _read(os.path.join(v1, "memory.limit_in_bytes")).strip()
            if raw.isdigit() and int(raw) < UNLIMITED:
                usage = _read(os.path.join(v1, "memory.usage_in_bytes")).strip()
                inactive = _stat_value(_read(os.path.join(v1, "memory.stat")), "total_inactive_file")
                return int(raw), max(0, int(usage or 0) - inactive)
        return None, 0

    def limit_and_available(self) -> Tuple[int, int]:
        """(the limit, what can still be used) in bytes."""
        info = _meminfo()
        host_total = info.get("MemTotal", 0)
        host_available = info.get("MemAvailable", host_total)
        limit, used = self.cgroup()
        if limit is None or (host_total and limit >= host_total):
            return host_total, host_available
        return limit, max(0, min(limit - used, host_available))


def _pss(pid: int) -> int:
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):  # "Pss:    1234 kB"
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    statm = _read(f"/proc/{pid}/statm").split()  # no smaps_rollup (kernel < 4.14): resident pages
    return int(statm[1]) * _PAGE if len(statm) > 1 and statm[1].isdigit() else 0


def processes_memory(pids: Iterable[int]) -> int:
    """The memory of these processes together, in bytes (PSS, else RSS)."""
    return sum(_pss(pid) for pid in pids)
