"""Distributed training across the job's hosts: rendezvous variables and torchrun.

Every job exports MASTER_ADDR, MASTER_PORT, WORLD_SIZE (hosts) and NODE_RANK
(this host's index), so a script using torch.distributed (or anything that
follows the same convention) finds the master without parsing resourceconfig.
The master is the first host. With a single host the master is 127.0.0.1:
nothing needs to resolve, and a local run's "algo-1" usually does not.

When the job asks for torch distributed (the sagemaker_torch_distributed_enabled
or sagemaker_pytorch_ddp_enabled hyperparameter, or SMSUPER_TORCH_DISTRIBUTED),
the program is started by torchrun on every host with one process per GPU
(or one on a CPU host). MPI launches are not supported: such a job fails
before anything runs, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

from ..sagemaker.hyperparameters import Hyperparameters, is_true
from . import entrypoint as ep

TORCH_FLAGS = ("sagemaker_torch_distributed_enabled", "sagemaker_pytorch_ddp_enabled")
MPI_FLAGS = {
    "sagemaker_mpi_enabled": "MPI (sagemaker_mpi_enabled)",
    "sagemaker_distributed_dataparallel_enabled":
        "SageMaker distributed data parallel (sagemaker_distributed_dataparallel_enabled), which runs over MPI",
}
LOOPBACK = "127.0.0.1"


class DistributionError(ValueError):
    """The requested kind of distribution cannot be run by smsuper."""


@dataclass(frozen=True)
class Distribution:
    hosts: Sequence[str]
    current_host: str
    master_port: int
    torchrun: bool
    nproc_per_node: int

    @property
    def node_rank(self) -> int:
        return list(self.hosts).index(self.current_host)

    @property
    def master_addr(self) -> str:
        return self.hosts[0] if len(self.hosts) > 1 else LOOPBACK

    def env(self) -> Dict[str, str]:
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "WORLD_SIZE": str(len(self.hosts)),
            "NODE_RANK": str(self.node_rank),
        }

    def torchrun_options(self) -> List[str]:
        return ["--nnodes", str(len(self.hosts)), "--nproc_per_node", str(self.nproc_per_node),
                "--node_rank", str(self.node_rank), "--master_addr", self.master_addr,
                "--master_port", str(self.master_port)]

    def command(self, entry: ep.EntryPoint, python: str, args: Sequence[str]) -> List[str]:
        """The argv starting `entry`: through torchrun when asked for."""
        if not self.torchrun or entry.kind == ep.FRAMEWORK:
            return entry.command(python, args)
        launcher = [python, "-m", "torch.distributed.run", *self.torchrun_options()]
        if entry.kind == ep.SCRIPT:
            return [*launcher, entry.target, *args]
        if entry.kind in (ep.PACKAGE, ep.MODULE_DIR):
            return [*launcher, "-m", entry.target, *args]
        # Not Python: torchrun starts it as a program of its own.
        return [*launcher, "--no-python", *entry.command(python, args)]


def torch_requested(hyperparameters: Hyperparameters, setting: bool) -> bool:
    return setting or any(is_true(hyperparameters.framework.get(flag)) for flag in TORCH_FLAGS)


def refuse_mpi(hyperparameters: Hyperparameters, entry: ep.EntryPoint) -> None:
    """MPI is not supported: fail clearly instead of running one process per
    host that each believe they are alone. A framework module does its own
    launching, so it may still use MPI."""
    if entry.kind == ep.FRAMEWORK:
        return
    for flag, what in MPI_FLAGS.items():
        if is_true(hyperparameters.framework.get(flag)):
            raise DistributionError(
                f"{what} is not supported by smsuper. Use torch distributed instead "
                "(distribution={'torch_distributed': {'enabled': True}} in the SDK, or "
                "SMSUPER_TORCH_DISTRIBUTED=true), or start mpirun from your own entry point.")


def plan(hosts: Sequence[str], current_host: str, master_port: int, torchrun: bool,
         num_gpus: int) -> Distribution:
    return Distribution(hosts=list(hosts), current_host=current_host, master_port=master_port,
                        torchrun=torchrun, nproc_per_node=max(1, num_gpus))
