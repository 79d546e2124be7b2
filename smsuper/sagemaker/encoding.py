"""Values as the toolkit writes them into SM_* variables and command lines.

Scripts written for the official containers parse these strings (argparse
types, json.loads of SM_HPS), so the formats are matched exactly:

- environment: strings as they are, None as "", everything else compact JSON
  with sorted keys and ASCII escapes;
- arguments: keys sorted, `--key value` (`-k value` for one-letter keys), the
  value as str() except that an object becomes `k1=v1,k2=v2`.

Unlike the toolkit the arguments stay a list: they are never joined into a
shell command, so no value is ever re-split or interpreted.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping


def env_value(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def env_name(key: str) -> str:
    return "SM_" + str(key).upper()


def is_valid_env_name(name: str) -> bool:
    # Anything but "=" and NUL is allowed in a name by execve; "-" and "."
    # (SM_HP_BATCH-SIZE) are kept because the toolkit keeps them.
    return bool(name) and "=" not in name and "\0" not in name


def to_env_vars(mapping: Mapping[str, Any]) -> Dict[str, str]:
    """{"model_dir": "/opt/ml/model"} -> {"SM_MODEL_DIR": "/opt/ml/model"}."""
    return {env_name(key): env_value(value) for key, value in mapping.items()}


def arg_value(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None:
        return ""
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in sorted(value.items()))
    return str(value)


def arg_name(key: str) -> str:
    return f"--{key}" if len(key) > 1 else f"-{key}"


def to_cmd_args(hyperparameters: Mapping[str, Any]) -> List[str]:
    """{"lr": 0.1, "b": 2} -> ["-b", "2", "--lr", "0.1"], one list item per argument."""
    args: List[str] = []
    for key in sorted(hyperparameters):
        if not key:
            continue  # an empty name cannot become an option
        args += [arg_name(key), arg_value(hyperparameters[key])]
    return args
