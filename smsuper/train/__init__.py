"""`smsuper train`: the user's training code under the SageMaker training contract.

The decisions live in small pure modules (entrypoint: what to run; launch:
argv, environment, cwd; distributed: torchrun and rendezvous variables;
requirements: the pip run; failure: the failure reason) and `job` executes
them under the init's supervisor. See docs/training.md for the behaviour.
"""

from __future__ import annotations

from typing import List


def main(args: List[str]) -> int:
    # Imported here so the pure modules can be used (and tested) without the init.
    from .job import main as run

    return run(args)
