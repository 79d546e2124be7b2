"""What every job exports: the build, PID 1 itself, and each child role.

Read at scrape time from the supervisor's table (up, restarts, last exit
code, start time) and from /proc (memory and CPU of each child's whole
process tree: gunicorn's master with its workers, nginx with its workers).
RSS is summed over the tree's processes, so pages they share (a preloaded
model) count once per process, as `ps` would show them.
"""

from __future__ import annotations

import os
import sys

from .. import __version__, build_id
from ..init import procfs
from .exposition import Family, counter, gauge

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Tuple


def build_info() -> List[Family]:
    info = gauge("build_info", "smsuper's version and build; always 1.")
    info.add(1, version=__version__, build=build_id(), python=sys.version.split()[0])
    return [info]


def _tree(root: int, table: Dict[int, Tuple[int, int, float, float]],
          below: Dict[int, List[int]]) -> Tuple[int, float, int]:
    """(resident bytes, CPU seconds including reaped descendants, process count) of root's tree."""
    rss, cpu, count = 0, 0.0, 0
    stack = [root]
    seen = set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        _, resident, own, reaped = table[pid]
        rss += resident
        cpu += own + reaped
        count += 1
        stack.extend(below.get(pid, ()))
    return rss, cpu, count


def collector(supervisor):
    """A collector for `supervisor`'s children and PID 1 itself."""

    def collect() -> List[Family]:
        table = procfs.snapshot()
        below: Dict[int, List[int]] = {}
        for pid, entry in table.items():
            below.setdefault(entry[0], []).append(pid)
        up = gauge("child_up", "1 while the child of this role runs, 0 when it has exited.")
        restarts = counter("child_restarts", "Times the supervisor restarted the child of this role.")
        exit_code = gauge("child_last_exit_code", "Exit code of the last exit of the child of this role "
                                                  "(128+N when killed by signal N).")
        started = gauge("child_start_time_seconds", "Unix time the child of this role last started.")
        memory = gauge("child_resident_memory_bytes", "Resident memory of the child's process tree, summed "
                                                      "over its processes.")
        cpu = counter("child_cpu_seconds", "CPU time (user+system) of the child's process tree since it "
                                           "started, exited descendants included.")
        processes = gauge("child_processes", "Processes in the child's process tree.")
        seen = set()
        for child in supervisor.children:
            role = child.spec.role
            if role in seen:
                continue  # roles are unique in every job; a duplicate would make the exposition invalid
            seen.add(role)
            up.add(1 if child.alive else 0, role=role)
            restarts.add(child.restarts, role=role)
            started.add(child.started_at, role=role)
            if child.last_exit is not None:
                exit_code.add(child.last_exit.code, role=role)
            if child.alive and child.pid in table:
                rss, seconds, count = _tree(child.pid, table, below)
                memory.add(rss, role=role)
                cpu.add(seconds, role=role)
                processes.add(count, role=role)
        own = table.get(os.getpid())
        init_memory = gauge("init_resident_memory_bytes", "Resident memory of smsuper's PID 1 itself.")
        init_cpu = counter("init_cpu_seconds", "CPU time (user+system) of smsuper's PID 1 itself.")
        if own is not None:
            init_memory.add(own[1])
            init_cpu.add(own[2])
        return [up, restarts, exit_code, started, memory, cpu, processes, init_memory, init_cpu]

    return collect
