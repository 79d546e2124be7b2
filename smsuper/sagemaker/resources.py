"""CPUs and GPUs this container may really use, not the host's.

os.cpu_count() is the host's count: a container limited to 2 CPUs on a
96-core host that starts 96 workers thrashes. The real limit is the smallest
of the affinity mask (cpusets, `taskset`) and the CFS quota of the cgroup
(cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`), rounded up.

GPUs are counted from the NVIDIA driver (/proc/driver/nvidia/gpus, else
`nvidia-smi -L`), then narrowed by NVIDIA_VISIBLE_DEVICES and
CUDA_VISIBLE_DEVICES the way the container runtime and CUDA narrow them.
Both functions take their roots as arguments so tests can hand them a fake
/proc and /sys.
"""

from __future__ import annotations

import math
import os
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterable, List, Mapping, Optional, Tuple

PROC = "/proc"
CGROUP_ROOT = "/sys/fs/cgroup"


# ---- CPUs ----------------------------------------------------------------------

def affinity_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def _membership(proc: str) -> List[Tuple[str, List[str], str]]:
    """(hierarchy id, controllers, path) for each line of /proc/self/cgroup."""
    text = _read(os.path.join(proc, "self", "cgroup")) or ""
    entries = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            entries.append((parts[0], [c for c in parts[1].split(",") if c], parts[2]))
    return entries


def _ancestors(root: str, relative: str) -> Iterable[str]:
    """The cgroup's directory and each parent up to the mount root. Inside a
    cgroup namespace the path is usually "/", so the root is always tried."""
    relative = relative.strip("/")
    seen = set()
    while True:
        directory = os.path.join(root, relative) if relative else root
        if directory not in seen and os.path.isdir(directory):
            seen.add(directory)
            yield directory
        if not relative:
            return
        relative = os.path.dirname(relative)


def _quota_v2(directory: str) -> Optional[float]:
    text = _read(os.path.join(directory, "cpu.max"))
    if not text:
        return None
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(directory: str) -> Optional[float]:
    quota_text = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period_text = _read(os.path.join(directory, "cpu.cfs_period_us"))
    try:
        quota = int((quota_text or "").strip())
        period = int((period_text or "").strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(proc: str = PROC, cgroup_root: str = CGROUP_ROOT) -> Optional[float]:
    """The tightest CFS quota over this process's cgroup and its ancestors, in CPUs."""
    limits: List[float] = []
    for hierarchy, controllers, path in _membership(proc):
        if hierarchy == "0" and not controllers:  # cgroup v2 unified hierarchy
            for directory in _ancestors(cgroup_root, path):
                limit = _quota_v2(directory)
                if limit:
                    limits.append(limit)
        elif "cpu" in controllers:
            for mount in (",".join(controllers), "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                root = os.path.join(cgroup_root, mount)
                if os.path.isdir(root):
                    for directory in _ancestors(root, path):
                        limit = _quota_v1(directory)
                        if limit:
                            limits.append(limit)
                    break
    return min(limits) if limits else None


def cpu_count(proc: str = PROC, cgroup_root: str = CGROUP_ROOT) -> int:
    """CPUs this process may use: affinity, capped by the cgroup quota (rounded up)."""
    count = affinity_count()
    limit = cgroup_cpu_limit(proc, cgroup_root)
    if limit:
        count = min(count, max(1, math.ceil(limit - 1e-9)))
    return max(1, count)


# ---- GPUs ----------------------------------------------------------------------

def _driver_gpus(proc: str) -> Optional[int]:
    directory = os.path.join(proc, "driver", "nvidia", "gpus")
    try:
        return len([entry for entry in os.listdir(directory) if not entry.startswith(".")])
    except OSError:
        return None


def _nvidia_smi_gpus(environ: Mapping[str, str]) -> int:
    # Imported only here: PID 1 reads the CPU count from this module, and subprocess with shutil
    # would cost it about 1.5 MB of RSS for the life of the container.
    import shutil
    import subprocess

    program = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
    if not program:
        return 0
    try:
        result = subprocess.run([program, "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if result.returncode != 0:
        return 0
    return sum(1 for line in result.stdout.decode("utf-8", "replace").splitlines()
               if line.startswith("GPU "))


def _visible(value: Optional[str], physical: int, runtime: bool) -> int:
    """How many of `physical` GPUs a *_VISIBLE_DEVICES value leaves visible."""
    if value is None:
        return physical
    value = value.strip()
    if runtime and value.lower() == "all":
        return physical
    if runtime and value.lower() in ("", "none", "void"):
        return 0
    visible = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            if runtime:
                continue
            break
        if item.isdigit() or (item.startswith("-") and item[1:].isdigit()):
            index = int(item)
            if not 0 <= index < physical:
                if runtime:
                    continue
                break  # CUDA stops enumerating at the first invalid index
            visible.add(("index", index))
        else:
            visible.add(("uuid", item))  # GPU-... or MIG-...: trust the runtime
    return min(physical, len(visible))


def gpu_count(environ: Optional[Mapping[str, str]] = None, proc: str = PROC) -> int:
    """Visible NVIDIA GPUs; 0 when there is no driver."""
    env = os.environ if environ is None else environ
    physical = _driver_gpus(proc)
    if physical is None:
        physical = _nvidia_smi_gpus(env)
    if physical <= 0:
        return 0
    count = _visible(env.get("NVIDIA_VISIBLE_DEVICES"), physical, runtime=True)
    return _visible(env.get("CUDA_VISIBLE_DEVICES"), count, runtime=False)
