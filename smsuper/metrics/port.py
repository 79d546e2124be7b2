"""Which port the metrics endpoint listens on, if any.

SMSUPER_METRICS_PORT wins when it is set (0 turns the endpoint off). Unset,
the platform's rule applies: an extra port must come from
SAGEMAKER_SAFE_PORT_RANGE when that is set, so the first port of the range
is taken; otherwise 9464 (the port registered for Prometheus exporters of
this kind). The serving port is never used: an explicit clash is an error,
a default one moves to the next free choice.
"""

from __future__ import annotations

import os

from .. import log, settings

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Mapping, Optional

SETTING = "SMSUPER_METRICS_PORT"
RANGE_SETTING = "SAGEMAKER_SAFE_PORT_RANGE"


def choose(serving_port: Optional[int] = None, environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """The port, or None when the endpoint is off. Raises SettingError on a clash with `serving_port`."""
    env = os.environ if environ is None else environ
    port = settings.value(SETTING, env)
    safe = settings.value(RANGE_SETTING, env)
    if (env.get(SETTING) or "").strip():
        if port == 0:
            return None
        if port == serving_port:
            raise settings.SettingError(
                f"{SETTING}={port} is the serving port (SAGEMAKER_BIND_TO_PORT): the metrics endpoint needs "
                f"a port of its own. Pick another, or unset {SETTING} to take "
                f"{'the first port of ' + RANGE_SETTING if safe else 'the default'}.")
        if safe and not safe[0] <= port <= safe[1]:
            log.warning(f"{SETTING}={port} is outside {RANGE_SETTING}={safe[0]}-{safe[1]}: the platform may "
                        f"block it")
        return port
    candidates = range(safe[0], safe[1] + 1) if safe else (port, port + 1)
    for candidate in candidates:
        if candidate != serving_port:
            return candidate
    log.warning(f"{RANGE_SETTING}={safe[0]}-{safe[1]} holds only the serving port: no metrics endpoint")
    return None
