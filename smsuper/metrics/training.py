"""Training metrics: the job's phase, the script's run time and exit code, and
the user's own metrics parsed from the script's log lines.

The user's metrics are declared like the platform's metric definitions
(SMSUPER_METRIC_DEFINITIONS='[{"Name": "train:loss", "Regex": "loss=([0-9.]+)"}]').
Every line the script writes, on stdout or stderr, is matched against every
regex; the first group (the whole match when there is none) is the value,
and the last value seen is exported as smsuper_training_metric{name="..."}.
The relay hands over chunks of whole lines (see init/relay.py), so a line is
never matched in two halves. Lines end at \\n or \\r: a progress bar's
`\\r loss=0.3` counts as soon as it is drawn.
"""

from __future__ import annotations

import re
import time

from .. import roles
from .exposition import Family, gauge

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Pattern, Sequence, Tuple

PHASES = ("starting", "installing", "training", "stopping", "completed", "failed")
SCRIPT_ROLE = roles.SCRIPT
INSTALL_ROLE = roles.PIP


def _value(match) -> Optional[float]:
    text = match.group(1) if match.re.groups else match.group(0)
    try:
        return float(text.strip()) if text is not None else None
    except ValueError:
        return None


class LogMetrics:
    """The user's metric definitions, applied to relayed output."""

    def __init__(self, definitions: Sequence[dict]):
        self.patterns: List[Tuple[str, Pattern]] = [(d["Name"], re.compile(d["Regex"])) for d in definitions]
        self.values: Dict[str, float] = {}
        self.seen_at: Dict[str, float] = {}  # unix time of the last line that gave each a value

    def feed(self, chunk: bytes) -> None:
        """Called by the relay with whole lines (a hook: it must not raise, and must be quick)."""
        if not self.patterns:
            return
        now = None
        for line in chunk.decode("utf-8", "replace").splitlines():
            for name, pattern in self.patterns:
                match = pattern.search(line)
                if match is not None:
                    value = _value(match)
                    if value is not None:
                        self.values[name] = value
                        self.seen_at[name] = now = now or time.time()


def phase(supervisor) -> str:
    """Where the job is, read from the supervisor's table."""
    by_role = {child.spec.role: child for child in supervisor.children}
    script = by_role.get(SCRIPT_ROLE)
    install = by_role.get(INSTALL_ROLE)
    if script is not None:
        if script.alive:
            return "stopping" if supervisor.stopping else "training"
        return "completed" if script.status is not None and script.status.code == 0 else "failed"
    if install is not None:
        if install.alive:
            return "stopping" if supervisor.stopping else "installing"
        return "failed" if install.status is not None and install.status.code != 0 else "installing"
    return "stopping" if supervisor.stopping else "starting"


def collector(supervisor, log_metrics: LogMetrics):
    def collect() -> List[Family]:
        current = phase(supervisor)
        phases = gauge("training_phase", "1 for the phase the training job is in, 0 for the others.")
        for name in PHASES:
            phases.add(1 if name == current else 0, phase=name)
        duration = gauge("training_duration_seconds", "Seconds the training program has run (so far, or in all).")
        exit_code = gauge("training_exit_code", "Exit code of the training program (128+N when killed by "
                                                "signal N), once it has exited.")
        script = next((c for c in supervisor.children if c.spec.role == SCRIPT_ROLE), None)
        if script is not None and script.started_at:
            end = time.time() if script.alive else script.exited_at
            duration.add(max(0.0, end - script.started_at))
            if not script.alive and script.status is not None:
                exit_code.add(script.status.code)
        user = gauge("training_metric", "The training program's own metrics, parsed from its log lines by "
                                        "SMSUPER_METRIC_DEFINITIONS; the last value seen.")
        seen = gauge("training_metric_timestamp_seconds", "Unix time of the last log line that gave the "
                                                          "training program's metric a value.")
        for name, value in log_metrics.values.items():
            user.add(value, name=name)
            seen.add(log_metrics.seen_at[name], name=name)
        # Every declared name, seen or not: "declared but never seen" is then one query.
        declared = gauge("training_metric_declared", "1 for each metric SMSUPER_METRIC_DEFINITIONS declares.")
        for name in dict.fromkeys(name for name, _ in log_metrics.patterns):
            declared.add(1, name=name)
        return [phases, duration, exit_code, user, seen, declared]

    return collect
