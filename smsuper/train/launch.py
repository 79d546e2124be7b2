"""What exactly runs: argv, environment and working directory of the script.

Pure: given the resolved entry point, the training environment and the
distribution plan, it decides; job.py only executes. Hyperparameters arrive
as one argv item each (no shell ever re-parses them). The environment is the
container's own plus the SM_* variables, the rendezvous variables, and for
Python entry points PYTHONUNBUFFERED=1 and the code directory first on
PYTHONPATH; nothing else on PYTHONPATH changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from ..sagemaker.environment import TrainingEnvironment
from . import entrypoint as ep
from .distributed import Distribution


@dataclass(frozen=True)
class Launch:
    argv: List[str]
    env: Dict[str, str]
    cwd: Optional[str]
    name: str  # how messages name the program


def pythonpath(code_dir: str, current: Optional[str]) -> str:
    """The code directory first, the rest untouched."""
    if not current:
        return code_dir
    if current.split(os.pathsep)[0] == code_dir:
        return current
    return code_dir + os.pathsep + current


def toolkit_extras(training: TrainingEnvironment, environ: Mapping[str, str]) -> Dict[str, str]:
    """Variables the toolkit sets in its own process, which scripts inherit."""
    region = training.hyperparameters.sagemaker("sagemaker_region") or environ.get("AWS_REGION", "")
    return {
        "CURRENT_HOST": training.current_host,
        "SAGEMAKER_JOB_NAME": str(training.hyperparameters.sagemaker("sagemaker_job_name") or ""),
        "SAGEMAKER_REGION": str(region or ""),
    }


def build(entry: ep.EntryPoint, training: TrainingEnvironment, distribution: Distribution,
          python: str, environ: Mapping[str, str], extra_args: Sequence[str] = ()) -> Launch:
    args = [*training.user_args, *extra_args]
    env = dict(environ)
    env.update(toolkit_extras(training, environ))
    env.update(training.sm_variables())
    env.update(distribution.env())
    if entry.speaks_python:
        env["PYTHONUNBUFFERED"] = "1"
    if entry.is_python and entry.code_dir:
        env["PYTHONPATH"] = pythonpath(entry.code_dir, environ.get("PYTHONPATH"))
    return Launch(argv=distribution.command(entry, python, args), env=env, cwd=entry.code_dir,
                  name=entry.name)
