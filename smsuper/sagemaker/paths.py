"""Where the platform puts things, under /opt/ml or SAGEMAKER_BASE_DIR."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Tuple

DEFAULT_BASE_DIR = "/opt/ml"

HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
CHECKPOINT_CONFIG_FILE = "checkpointconfig.json"


@dataclass(frozen=True)
class Paths:
    """Every path of the training contract, derived from one base directory.

    Paths carry no trailing slash, as the toolkit's do, because scripts join
    them and compare them with strings of their own.
    """

    base_dir: str = DEFAULT_BASE_DIR

    @property
    def code_dir(self) -> str:
        return os.path.join(self.base_dir, "code")

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base_dir, "model")

    @property
    def input_dir(self) -> str:
        return os.path.join(self.base_dir, "input")

    @property
    def input_config_dir(self) -> str:
        return os.path.join(self.input_dir, "config")

    @property
    def input_data_dir(self) -> str:
        return os.path.join(self.input_dir, "data")

    @property
    def output_dir(self) -> str:
        return os.path.join(self.base_dir, "output")

    @property
    def output_data_dir(self) -> str:
        return os.path.join(self.output_dir, "data")

    @property
    def output_intermediate_dir(self) -> str:
        return os.path.join(self.output_dir, "intermediate")

    @property
    def failure_file(self) -> str:
        return os.path.join(self.output_dir, "failure")

    @property
    def success_file(self) -> str:
        return os.path.join(self.output_dir, "success")

    @property
    def default_checkpoint_dir(self) -> str:
        # /opt/ml/checkpoints on the platform; follows a moved base dir locally.
        return os.path.join(self.base_dir, "checkpoints")

    def config_file(self, name: str) -> str:
        return os.path.join(self.input_config_dir, name)

    def channel_dir(self, channel: str) -> str:
        return os.path.join(self.input_data_dir, channel)

    def script_writable_dirs(self, checkpoint_dir: str) -> Tuple[str, ...]:
        """Directories the training script writes into: created before it runs
        (and the ones a privilege drop must hand to the workload's user)."""
        return (self.model_dir, self.output_dir, self.output_data_dir,
                self.output_intermediate_dir, checkpoint_dir)
