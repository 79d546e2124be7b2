"""The serve job's settings, resolved once by PID 1, and the timeouts derived from them.

PID 1 resolves the ServeConfig (a bad value stops the job before anything starts) and hands
it whole to the gunicorn master: serialised once into CONFIG_VARIABLE of the master's
environment, which the master reads and removes (`received`), so its workers and the user's
code never see it. Nothing downstream reads a serving setting from the environment again.
The timeouts come from timeouts.py, the one table of them.
"""

from __future__ import annotations

import json
import os
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Any, Dict, Mapping, MutableMapping, Optional

from .. import settings
from . import timeouts

JOB = "serve"
CONFIG_VARIABLE = "SMSUPER_SERVE_CONFIG"  # PID 1 -> the gunicorn master; not a setting: smsuper writes it


def default_workers() -> int:
    """The CPUs this container may use (affinity and cgroup quota), not the host's."""
    from ..sagemaker.resources import cpu_count

    return cpu_count()


# Every field of a ServeConfig, with what it holds. A plain class rather than a dataclass:
# PID 1 then carries no dataclasses (and its inspect, ast, dis: ~1 MB of RSS).
FIELDS = (
    "port",
    "workers",
    "threads",
    "timeout",  # seconds a request may take (T)
    "max_payload_mb",
    "default_accept",
    "json_allow_nan",  # the default JSON codecs read and write NaN/Infinity (Python's dialect)
    "preload",
    "max_requests",
    "log_ping",
    "app",  # style B: module:attr of the user's WSGI app, or None
    "batch_strategy",
    "max_concurrent_transforms",
    "grace_period",  # G
    "base_dir",
    "program",
    "submit_directory",
    "log_level",
    "log_format",
    "install_requirements",
    "nginx",  # the program to look for
    "runtime_dir",  # SMSUPER_RUNTIME_DIR: '' for a new private one
    "restart_limit",
    "restart_window",
    "streams_per_worker",  # bidirectional streams one worker holds at once
    "stream_timeout",  # seconds a streamed answer may last in all (0: no bound)
    "sessions",  # stateful sessions (worker/sessions.py)
    "sessions_expiration",
    "multi_model",  # SAGEMAKER_MULTI_MODEL: models loaded at run time (multimodel/)
    "model_memory_margin_mb",
    "batch_size",  # server-side batching (worker/batching.py); 1 is off
    "batch_delay",  # seconds a request waits to fill its batch
)


class ServeConfig:
    """The serving settings, resolved once (`resolve`); it does not change afterwards."""

    __slots__ = FIELDS

    def __init__(self, **values: Any):
        unknown, missing = set(values) - set(FIELDS), set(FIELDS) - set(values)
        if unknown or missing:
            raise TypeError(f"ServeConfig: unknown {sorted(unknown)}, missing {sorted(missing)}")
        for name in FIELDS:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ServeConfig is resolved once: {name} cannot change")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServeConfig) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in FIELDS))

    def __repr__(self) -> str:
        return "ServeConfig(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS) + ")"

    def as_dict(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    # ---- derived ----------------------------------------------------------------
    @property
    def batching(self) -> bool:
        """Batching applies to the handler functions only: a user's WSGI app serves its own way."""
        return self.batch_size > 1 and not self.app

    @property
    def worker_threads(self) -> int:
        """A worker needs as many request threads as a batch has requests to ever fill one."""
        return max(self.threads, self.batch_size) if self.batching else self.threads

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb * 1024 * 1024

    @property
    def model_dir(self) -> str:
        return os.path.join(self.base_dir, "model")

    @property
    def worker_timeout(self) -> int:
        return timeouts.worker_timeout(self.timeout)

    @property
    def nginx_shutdown_timeout(self) -> float:
        return timeouts.nginx_shutdown(self.grace_period)

    @property
    def stream_stop_deadline(self) -> float:
        return timeouts.stream_stop(self.grace_period)

    @property
    def drain_wait(self) -> float:
        return timeouts.drain_wait(self.grace_period)

    @property
    def stop_deadline(self) -> float:
        return timeouts.stop_deadline(self.grace_period)

    def execution_parameters(self) -> dict:
        return {
            "MaxConcurrentTransforms": self.max_concurrent_transforms,
            "BatchStrategy": self.batch_strategy,
            "MaxPayloadInMB": self.max_payload_mb,
        }

    # ---- the one way from PID 1 to the gunicorn master ------------------------------
    def handed_over(self, environ: Mapping[str, str]) -> Dict[str, str]:
        """`environ` for the gunicorn master, carrying this config."""
        return dict(environ, **{CONFIG_VARIABLE: json.dumps(self.as_dict(), sort_keys=True)})


def received(environ: MutableMapping[str, str]) -> ServeConfig:
    """The config PID 1 handed over (ServeConfig.handed_over), taken out of `environ`."""
    text = environ.pop(CONFIG_VARIABLE, None)
    if text is None:
        raise settings.SettingError(f"{CONFIG_VARIABLE} is not set: the gunicorn master is started by "
                                    f"`smsuper serve`, which passes it the serving configuration")
    return ServeConfig(**json.loads(text))


def resolve(environ: Optional[Mapping[str, str]] = None) -> ServeConfig:
    """Read every serving setting; raises settings.SettingError naming a bad variable."""

    def get(name: str):
        return settings.value(name, environ, JOB)

    multi_model = get("SAGEMAKER_MULTI_MODEL")
    # One worker per model by default (each model has its own): the official toolkit's MME default.
    count = get("SAGEMAKER_MODEL_SERVER_WORKERS") or (1 if multi_model else default_workers())
    return ServeConfig(
        port=get("SAGEMAKER_BIND_TO_PORT"),
        workers=count,
        threads=get("SMSUPER_WORKER_THREADS"),
        timeout=get("SAGEMAKER_MODEL_SERVER_TIMEOUT"),
        max_payload_mb=get("SAGEMAKER_MAX_PAYLOAD_IN_MB"),
        default_accept=get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"),
        json_allow_nan=get("SMSUPER_JSON_ALLOW_NAN"),
        preload=get("SMSUPER_PRELOAD_MODEL"),
        max_requests=get("SMSUPER_MAX_REQUESTS"),
        log_ping=get("SMSUPER_LOG_PING"),
        app=get("SMSUPER_APP"),
        batch_strategy=get("SAGEMAKER_BATCH_STRATEGY"),
        max_concurrent_transforms=get("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS") or count,
        grace_period=get("SMSUPER_GRACE_PERIOD"),
        base_dir=get("SAGEMAKER_BASE_DIR"),
        program=get("SAGEMAKER_PROGRAM") or "inference.py",
        submit_directory=get("SAGEMAKER_SUBMIT_DIRECTORY"),
        log_level=get("SMSUPER_LOG_LEVEL"),
        log_format=get("SMSUPER_LOG_FORMAT"),
        install_requirements=get("SMSUPER_INSTALL_REQUIREMENTS"),
        nginx=get("SMSUPER_NGINX"),
        runtime_dir=get("SMSUPER_RUNTIME_DIR"),
        restart_limit=get("SMSUPER_RESTART_LIMIT"),
        restart_window=get("SMSUPER_RESTART_WINDOW"),
        streams_per_worker=get("SMSUPER_BIDIRECTIONAL_STREAMS_PER_WORKER"),
        stream_timeout=get("SMSUPER_STREAM_TIMEOUT"),
        sessions=get("SAGEMAKER_ENABLE_STATEFUL_SESSIONS"),
        sessions_expiration=get("SAGEMAKER_SESSIONS_EXPIRATION"),
        multi_model=multi_model,
        model_memory_margin_mb=get("SMSUPER_MODEL_MEMORY_MARGIN_MB"),
        batch_size=get("SMSUPER_BATCH_SIZE"),
        batch_delay=get("SMSUPER_BATCH_DELAY_MS") / 1000.0,
    )
