"""Hyperparameter values: decoded like the toolkit, split into user and framework ones.

The SDK's framework estimators JSON-encode every value ("10", "0.1", "true",
"\\"adam\\""); the generic estimator writes str() ("True", "adam"). Decoding
each value with json.loads and keeping the raw string when that fails gives
the same Python value the toolkit gives in both cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping

FRAMEWORK_PREFIX = "sagemaker_"

# Framework parameters the toolkit consumes itself: they reach neither the
# script's arguments nor SM_FRAMEWORK_PARAMS. Two of them lack the prefix
# (the tuner's objective and a module-name default), and passing them to an
# argparse script as --_tuning_objective_metric would break it.
RESERVED = frozenset({
    "sagemaker_program",
    "sagemaker_submit_directory",
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "default_user_module_name",
    "_tuning_objective_metric",
    "sagemaker_s3_output",
})


def decode_value(raw: Any) -> Any:
    """json.loads the value; a string that is not JSON stays as it is."""
    if not isinstance(raw, (str, bytes, bytearray)):
        return raw  # written as JSON already by a local tool: keep it
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def decode(raw: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: decode_value(value) for key, value in raw.items()}


@dataclass(frozen=True)
class Hyperparameters:
    user: Dict[str, Any]  # become the script's arguments, SM_HPS and SM_HP_*
    framework: Dict[str, Any]  # sagemaker_* not consumed by smsuper: SM_FRAMEWORK_PARAMS
    reserved: Dict[str, Any]  # sagemaker_program and the like

    def sagemaker(self, name: str, default: Any = None) -> Any:
        """A framework parameter, reserved or not."""
        if name in self.reserved:
            return self.reserved[name]
        return self.framework.get(name, default)


def split(decoded: Mapping[str, Any]) -> Hyperparameters:
    user, framework, reserved = {}, {}, {}
    for key, value in decoded.items():
        if key in RESERVED:
            reserved[key] = value
        elif key.startswith(FRAMEWORK_PREFIX):
            framework[key] = value
        else:
            user[key] = value
    return Hyperparameters(user=user, framework=framework, reserved=reserved)


def load(raw: Mapping[str, Any]) -> Hyperparameters:
    return split(decode(raw))


def is_true(value: Any) -> bool:
    """A flag as written either way: true / "true" / "True" / 1 / "1"."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return False
