"""Signal names as people read them, for PID 1's log lines and the training failure file."""

from __future__ import annotations

import signal


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal, or a number no name covers
        return f"signal {signum}"
