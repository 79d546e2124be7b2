"""Facts about processes read from /proc: the descendant tree, memory and CPU."""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Set, Tuple

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def stat_fields(pid: int) -> Optional[List[str]]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parens):
    [0] the state, [1] the parent pid, [2] the process group, [19] the start time; None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2:].decode().split()


def parent_of(pid: int) -> Optional[int]:
    """The parent pid of `pid`, or None when it is gone."""
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def is_running(pid: int) -> bool:
    """Whether `pid` exists and is neither a zombie nor dead."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")


def process_table() -> Dict[int, Tuple[int, str]]:
    """pid -> (parent pid, state letter) for every process we can see."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields(int(name))
            if fields:
                table[int(name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int, include_zombies: bool = True) -> Set[int]:
    """Every process below `root`; zombies (dead, not yet reaped) only when asked."""
    table = process_table()
    children: Dict[int, List[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: Set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    if not include_zombies:
        found = {pid for pid in found if table.get(pid, (0, "Z"))[1] != "Z"}
    return found


def snapshot() -> Dict[int, Tuple[int, int, float, float]]:
    """pid -> (parent pid, resident bytes, CPU seconds of its own, CPU seconds of
    the children it has reaped), for every live process, read once.

    Summing own + reaped over a process tree counts every descendant that ever
    ran exactly once (a dead one through the parent that reaped it), so the
    total only grows while the tree's root lives: it can be a counter.
    """
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(int(name))
        if not fields or fields[0] in ("Z", "X"):
            continue
        # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
        table[int(name)] = (int(fields[1]), int(fields[21]) * _PAGE_SIZE,
                            (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
                            (int(fields[13]) + int(fields[14])) / _CLOCK_TICKS)
    return table
