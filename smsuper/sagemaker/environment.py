"""Every SM_* variable a training script expects, with the toolkit's names and formats.

`TrainingEnvironment` holds the facts (hosts, channels, hyperparameters, the
entry point...) and `properties()` lists them under the toolkit's property
names: that dict is SM_TRAINING_ENV, and the SM_* variables are built from
it by `encoding.to_env_vars`, so a script reading SM_CHANNEL_TRAIN, SM_HPS or
SM_TRAINING_ENV gets exactly what the official containers give it.

smsuper adds one variable of its own: SM_CHECKPOINT_DIR, the checkpoint
directory (checkpointconfig.json's LocalPath, default /opt/ml/checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from . import encoding
from .configs import DEFAULT_INSTANCE_GROUP, TrainingConfig
from .hyperparameters import Hyperparameters, is_true
from .paths import Paths

# Framework parameters that make the toolkit treat the current instance group
# as a distribution group (they decide SM_DISTRIBUTION_INSTANCE_GROUPS).
DISTRIBUTION_FLAGS = (
    "sagemaker_mpi_enabled",
    "sagemaker_parameter_server_enabled",
    "sagemaker_distributed_dataparallel_enabled",
    "sagemaker_pytorch_ddp_enabled",
    "sagemaker_pytorch_xla_multi_worker_enabled",
    "sagemaker_multi_worker_mirrored_strategy_enabled",
    "sagemaker_torch_distributed_enabled",
)

CHECKPOINT_DIR_VARIABLE = "SM_CHECKPOINT_DIR"


@dataclass(frozen=True)
class EntryPointFacts:
    """What the SM_* variables say about the user's code."""

    user_entry_point: Optional[str]  # as configured: "train.py", None when absent
    module_dir: str  # the directory the code runs from
    framework_module: Optional[str] = None  # SAGEMAKER_TRAINING_MODULE


@dataclass(frozen=True)
class TrainingEnvironment:
    paths: Paths
    config: TrainingConfig
    hyperparameters: Hyperparameters
    entry_point: EntryPointFacts
    log_level: int
    num_cpus: int
    num_gpus: int
    checkpoint_dir: str
    job_name: Optional[str] = None

    # ---- resource config -------------------------------------------------------
    @property
    def hosts(self) -> List[str]:
        return list(self.config.resources["hosts"])

    @property
    def current_host(self) -> str:
        return self.config.resources["current_host"]

    @property
    def current_instance_type(self) -> str:
        return self.config.resources.get("current_instance_type", "local")

    @property
    def current_instance_group(self) -> str:
        return self.config.resources.get("current_group_name", DEFAULT_INSTANCE_GROUP)

    @property
    def network_interface_name(self) -> str:
        return self.config.resources.get("network_interface_name", "eth0")

    @property
    def _groups(self) -> List[Dict[str, Any]]:
        return list(self.config.resources.get("instance_groups") or [])

    @property
    def instance_groups(self) -> List[str]:
        return [group["instance_group_name"] for group in self._groups]

    @property
    def instance_groups_dict(self) -> Dict[str, Dict[str, Any]]:
        return {group["instance_group_name"]: group for group in self._groups}

    @property
    def current_instance_group_hosts(self) -> List[str]:
        for group in self._groups:
            if group["instance_group_name"] == self.current_instance_group:
                return list(group["hosts"])
        return []

    @property
    def distribution_instance_groups(self) -> List[str]:
        framework = self.hyperparameters.framework
        if "sagemaker_distribution_instance_groups" in framework:
            return framework["sagemaker_distribution_instance_groups"]
        if any(is_true(framework.get(flag)) for flag in DISTRIBUTION_FLAGS):
            return [self.current_instance_group]
        return []

    @property
    def distribution_hosts(self) -> List[str]:
        if not self._groups:
            return self.hosts
        chosen = self.distribution_instance_groups
        return [host for group in self._groups if group["instance_group_name"] in chosen
                for host in group["hosts"]]

    @property
    def master_hostname(self) -> str:
        return (self.distribution_hosts or self.hosts)[0]

    @property
    def is_master(self) -> bool:
        return self.current_host == self.master_hostname

    @property
    def is_hetero(self) -> bool:
        return len(self.instance_groups) > 1

    # ---- channels and code ---------------------------------------------------
    @property
    def channel_input_dirs(self) -> Dict[str, str]:
        return {channel: self.paths.channel_dir(channel) for channel in self.config.input_data}

    @property
    def module_name(self) -> Optional[str]:
        name = self.entry_point.user_entry_point
        if name and name.endswith(".py"):
            return name[:-3]
        return name

    @property
    def user_args(self) -> List[str]:
        return encoding.to_cmd_args(self.hyperparameters.user)

    def properties(self) -> Dict[str, Any]:
        """The toolkit Environment's properties, by name: SM_TRAINING_ENV."""
        mp_parameters = self.hyperparameters.user.get("mp_parameters")
        return {
            "additional_framework_parameters": self.hyperparameters.framework,
            "channel_input_dirs": self.channel_input_dirs,
            "current_host": self.current_host,
            "current_instance_group": self.current_instance_group,
            "current_instance_group_hosts": self.current_instance_group_hosts,
            "current_instance_type": self.current_instance_type,
            "distribution_hosts": self.distribution_hosts,
            "distribution_instance_groups": self.distribution_instance_groups,
            "framework_module": self.entry_point.framework_module,
            "hosts": self.hosts,
            "hyperparameters": self.hyperparameters.user,
            "input_config_dir": self.paths.input_config_dir,
            "input_data_config": self.config.input_data,
            "input_dir": self.paths.input_dir,
            "instance_groups": self.instance_groups,
            "instance_groups_dict": self.instance_groups_dict,
            "is_hetero": self.is_hetero,
            "is_master": self.is_master,
            "is_modelparallel_enabled": True if mp_parameters not in (None, "", {}) else None,
            "job_name": self.job_name,
            "log_level": self.log_level,
            "master_hostname": self.master_hostname,
            "model_dir": self.paths.model_dir,
            "module_dir": self.entry_point.module_dir,
            "module_name": self.module_name,
            "network_interface_name": self.network_interface_name,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "output_data_dir": self.paths.output_data_dir,
            "output_dir": self.paths.output_dir,
            "output_intermediate_dir": self.paths.output_intermediate_dir,
            "resource_config": self.config.resources,
            "user_entry_point": self.entry_point.user_entry_point,
        }

    def sm_variables(self) -> Dict[str, str]:
        """Every SM_* variable, as strings ready for a child's environment."""
        values: Dict[str, Any] = {
            "hosts": self.hosts,
            "network_interface_name": self.network_interface_name,
            "hps": self.hyperparameters.user,
            "user_entry_point": self.entry_point.user_entry_point,
            "framework_params": self.hyperparameters.framework,
            "resource_config": self.config.resources,
            "input_data_config": self.config.input_data,
            "output_data_dir": self.paths.output_data_dir,
            "channels": sorted(self.channel_input_dirs),
            "current_host": self.current_host,
            "current_instance_type": self.current_instance_type,
            "current_instance_group": self.current_instance_group,
            "current_instance_group_hosts": self.current_instance_group_hosts,
            "instance_groups": self.instance_groups,
            "instance_groups_dict": self.instance_groups_dict,
            "distribution_instance_groups": self.distribution_instance_groups,
            "is_hetero": self.is_hetero,
            "module_name": self.module_name,
            "log_level": self.log_level,
            "framework_module": self.entry_point.framework_module,
            "input_dir": self.paths.input_dir,
            "input_config_dir": self.paths.input_config_dir,
            "output_dir": self.paths.output_dir,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "model_dir": self.paths.model_dir,
            "module_dir": self.entry_point.module_dir,
            "training_env": self.properties(),
            "user_args": self.user_args,
            "output_intermediate_dir": self.paths.output_intermediate_dir,
            "checkpoint_dir": self.checkpoint_dir,
        }
        for channel, path in self.channel_input_dirs.items():
            values[f"channel_{channel}"] = path
        for key, value in self.hyperparameters.user.items():
            values[f"hp_{key}"] = value
        return {name: text for name, text in encoding.to_env_vars(values).items()
                if encoding.is_valid_env_name(name)}
