"""The SageMaker container contract as pure functions: no processes, no jobs.

`paths` places the platform's files under the base directory, `configs` loads
and validates the four JSON files of input/config, `hyperparameters` decodes
them, `encoding` turns values into SM_* variables and command-line arguments
exactly like the training toolkit, `environment` derives every SM_* variable,
and `resources` counts the CPUs and GPUs this container may really use.

Nothing here imports `smsuper.init` or a job: the jobs import this.
"""
