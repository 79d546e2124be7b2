"""Which GPU each worker uses: context.system_properties["gpu_id"].

The official toolkits' model servers give every worker one GPU, round robin
over the visible GPUs, and handlers pick it up as the SDK's PyTorch docs show:
`torch.device("cuda:" + str(context.system_properties.get("gpu_id")))`. On a
host without GPUs gpu_id is None, as there.

The gunicorn master counts the visible GPUs once (sagemaker.resources: the
NVIDIA driver or `nvidia-smi -L`, narrowed by NVIDIA_VISIBLE_DEVICES and
CUDA_VISIBLE_DEVICES; the id is an index among the visible ones, which is
what CUDA numbers them) and, before each fork, picks the least used GPU among
the live workers, lowest index first: workers starting together go 0, 1, 0,
1, ...; a replacement takes the GPU its predecessor left.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional

_visible = 0  # GPUs the master counted
_this_process: Optional[int] = None  # the GPU of this worker (or the master's, for a preloaded model)


def visible_count(environ: Optional[Mapping[str, str]] = None, proc: Optional[str] = None) -> int:
    from ...sagemaker import resources

    return resources.gpu_count(environ, proc or resources.PROC)


def pick(in_use: Iterable[Optional[int]], count: int) -> Optional[int]:
    """The GPU for a new worker, given the GPUs of the live ones: the least used, lowest first."""
    if count <= 0:
        return None
    load = [0] * count
    for gpu in in_use:
        if gpu is not None and 0 <= gpu < count:
            load[gpu] += 1
    return min(range(count), key=lambda gpu: (load[gpu], gpu))


def count_in_master() -> int:
    """Count once, in the gunicorn master, before any worker forks (workers inherit it)."""
    global _visible, _this_process
    _visible = visible_count()
    _this_process = 0 if _visible else None  # a model preloaded in the master sees the first GPU
    return _visible


def choose_for_worker(live_workers: Iterable[Optional[int]]) -> Optional[int]:
    return pick(live_workers, _visible)


def set_this_process(gpu: Optional[int]) -> None:
    global _this_process
    _this_process = gpu


def this_process() -> Optional[int]:
    return _this_process
