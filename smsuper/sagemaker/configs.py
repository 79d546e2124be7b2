"""Load and check the four files of input/config before anything runs.

Each file may be absent (a local run), which gives defaults. A file that is
not JSON, or not of the shape the platform writes, raises `ConfigError` whose
message names the file, the line and column, and what was expected there, so
the failure file tells the user exactly what to fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from . import jsonpos
from .paths import (CHECKPOINT_CONFIG_FILE, HYPERPARAMETERS_FILE, INPUT_DATA_CONFIG_FILE,
                    RESOURCE_CONFIG_FILE, Paths)

DEFAULT_HOST = "algo-1"
DEFAULT_INSTANCE_GROUP = "homogeneousCluster"

CHANNEL_STRING_FIELDS = ("ContentType", "TrainingInputMode", "S3DistributionType", "RecordWrapperType")


class ConfigError(ValueError):
    """A config file is unreadable, not JSON, or of the wrong shape."""


@dataclass(frozen=True)
class TrainingConfig:
    """The four files as loaded: plain JSON values, defaults where absent."""

    hyperparameters: Dict[str, Any]
    input_data: Dict[str, Dict[str, Any]]
    resources: Dict[str, Any]
    checkpoint: Optional[Dict[str, Any]]
    # Names of the files that were present, for log lines.
    present: List[str] = field(default_factory=list)


def default_resource_config() -> Dict[str, Any]:
    """What a local run without resourceconfig.json gets: one host, algo-1."""
    return {
        "current_host": DEFAULT_HOST,
        "hosts": [DEFAULT_HOST],
        "current_instance_type": "local",
        "current_group_name": DEFAULT_INSTANCE_GROUP,
        "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": DEFAULT_INSTANCE_GROUP,
                             "instance_type": "local", "hosts": [DEFAULT_HOST]}],
    }


# ---- reading -------------------------------------------------------------------

def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read: {error.strerror or error}") from None
    try:
        # utf-8-sig: a BOM left by an editor is harmless, so accept it.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        text = data[: error.start].decode("utf-8", "replace")
        line, column = jsonpos.line_column(text, len(text))
        raise ConfigError(f"{path}: line {line}, column {column}: not valid UTF-8 "
                          f"(byte 0x{data[error.start]:02x}); expected a UTF-8 JSON document") from None


def _parse(path: str, text: str, expected: str) -> Any:
    if not text.strip():
        raise ConfigError(f"{path}: line 1, column 1: the file is empty; expected {expected}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: line {error.lineno}, column {error.colno}: "
                          f"invalid JSON ({error.msg}); expected {expected}") from None


class _Checker:
    """Shape checks for one document, each failure located in its text."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.text = text

    def fail(self, where: Sequence[jsonpos.Step], message: str) -> None:
        line, column = jsonpos.locate(self.text, where)
        raise ConfigError(f"{self.path}: line {line}, column {column}: {message}")

    @staticmethod
    def describe(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "a boolean"
        if isinstance(value, (int, float)):
            return "a number"
        if isinstance(value, str):
            return "a string"
        if isinstance(value, list):
            return "a list"
        return "an object"

    def object(self, value: Any, where: Sequence[jsonpos.Step], expected: str) -> Dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected {expected}, found {self.describe(value)}")
        return value

    def string(self, value: Any, where: Sequence[jsonpos.Step], what: str, nonempty: bool = True) -> str:
        if not isinstance(value, str) or (nonempty and not value.strip()):
            found = "an empty string" if isinstance(value, str) else self.describe(value)
            self.fail(where, f"{what} must be a non-empty string, found {found}")
        return value

    def names(self, value: Any, where: Sequence[jsonpos.Step], what: str) -> List[str]:
        if not isinstance(value, list) or not value:
            found = "an empty list" if isinstance(value, list) else self.describe(value)
            self.fail(where, f"{what} must be a non-empty list of host names, found {found}")
        for index, item in enumerate(value):
            self.string(item, [*where, index], f"each entry of {what}")
        return value

    def required(self, document: Dict[str, Any], key: str, where: Sequence[jsonpos.Step], example: str) -> Any:
        if key not in document:
            self.fail(where, f'missing key "{key}" (expected, for example, {example})')
        return document[key]


# ---- the four files ------------------------------------------------------------

def _hyperparameters(path: str, text: str) -> Dict[str, Any]:
    expected = 'a JSON object of hyperparameter names to string values, like {"epochs": "10"}'
    document = _parse(path, text, expected)
    # Values are strings on the platform; numbers or nested values written by
    # local tools are kept as they are, as the toolkit does.
    return _Checker(path, text).object(document, [], expected)


def _input_data(path: str, text: str) -> Dict[str, Dict[str, Any]]:
    expected = 'a JSON object of channel names to channel objects, like {"train": {"TrainingInputMode": "File"}}'
    document = _parse(path, text, expected)
    check = _Checker(path, text)
    check.object(document, [], expected)
    for channel, settings in document.items():
        if not channel or "/" in channel or "\0" in channel or channel in (".", ".."):
            check.fail([channel], f"channel name {channel!r} cannot name a directory under input/data")
        check.object(settings, [channel], f'an object describing channel "{channel}"')
        for name in CHANNEL_STRING_FIELDS:
            if name in settings:
                check.string(settings[name], [channel, name], f'"{name}" of channel "{channel}"')
    return document


def _resources(path: str, text: str) -> Dict[str, Any]:
    expected = 'a JSON object like {"current_host": "algo-1", "hosts": ["algo-1"]}'
    document = _parse(path, text, expected)
    check = _Checker(path, text)
    check.object(document, [], expected)
    current = check.string(check.required(document, "current_host", [], '"current_host": "algo-1"'),
                           ["current_host"], '"current_host"')
    hosts = check.names(check.required(document, "hosts", [], '"hosts": ["algo-1", "algo-2"]'),
                        ["hosts"], '"hosts"')
    if current not in hosts:
        check.fail(["current_host"], f'"current_host" {current!r} is not one of "hosts" {hosts!r}')
    for name in ("current_instance_type", "current_group_name", "network_interface_name"):
        if name in document:
            check.string(document[name], [name], f'"{name}"')
    groups = document.get("instance_groups")
    if groups is not None:
        if not isinstance(groups, list):
            check.fail(["instance_groups"], f'"instance_groups" must be a list, found {check.describe(groups)}')
        for index, group in enumerate(groups):
            where = ["instance_groups", index]
            check.object(group, where, 'an instance group object like {"instance_group_name": "...", '
                                       '"instance_type": "...", "hosts": [...]}')
            check.string(check.required(group, "instance_group_name", where, '"instance_group_name": "train"'),
                         [*where, "instance_group_name"], '"instance_group_name"')
            if "instance_type" in group:
                check.string(group["instance_type"], [*where, "instance_type"], '"instance_type"')
            check.names(check.required(group, "hosts", where, '"hosts": ["algo-1"]'),
                        [*where, "hosts"], f'"hosts" of instance group {index}')
    return document


def _checkpoint(path: str, text: str) -> Dict[str, Any]:
    expected = 'a JSON object like {"LocalPath": "/opt/ml/checkpoints", "S3Uri": "s3://..."}'
    document = _parse(path, text, expected)
    check = _Checker(path, text)
    check.object(document, [], expected)
    if "LocalPath" in document:
        local = check.string(document["LocalPath"], ["LocalPath"], '"LocalPath"')
        if not os.path.isabs(local):
            check.fail(["LocalPath"], f'"LocalPath" must be an absolute path, found {local!r}')
    if "S3Uri" in document:
        check.string(document["S3Uri"], ["S3Uri"], '"S3Uri"', nonempty=False)
    return document


def load(paths: Paths) -> TrainingConfig:
    """Read and check every config file; raise ConfigError naming the first problem."""
    present: List[str] = []

    def read(name: str) -> Optional[str]:
        text = _read_text(paths.config_file(name))
        if text is not None:
            present.append(name)
        return text

    texts = {name: read(name) for name in (HYPERPARAMETERS_FILE, INPUT_DATA_CONFIG_FILE,
                                           RESOURCE_CONFIG_FILE, CHECKPOINT_CONFIG_FILE)}

    def parsed(name, parse, default):
        text = texts[name]
        return default if text is None else parse(paths.config_file(name), text)

    return TrainingConfig(
        hyperparameters=parsed(HYPERPARAMETERS_FILE, _hyperparameters, {}),
        input_data=parsed(INPUT_DATA_CONFIG_FILE, _input_data, {}),
        resources=parsed(RESOURCE_CONFIG_FILE, _resources, None) or default_resource_config(),
        checkpoint=parsed(CHECKPOINT_CONFIG_FILE, _checkpoint, None),
        present=present,
    )


def checkpoint_dir(config: TrainingConfig, paths: Paths) -> str:
    """checkpointconfig.json's LocalPath, else the default checkpoint directory."""
    if config.checkpoint and config.checkpoint.get("LocalPath"):
        return config.checkpoint["LocalPath"]
    return paths.default_checkpoint_dir
