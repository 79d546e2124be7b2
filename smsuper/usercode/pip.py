"""How smsuper runs pip for the user's code (train and serve alike).

pip runs in the image's Python, from the code directory (so relative paths
inside requirements.txt work), with its output streamed like the workload's.
Defaults that keep logs readable and pip from waiting for input are given
through PIP_* variables, which every pip version ignores when unknown; the
user's own PIP_* settings win.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, Mapping

REQUIREMENTS_FILE = "requirements.txt"
PIP_DEFAULTS = {
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "PIP_PROGRESS_BAR": "off",
    "PIP_ROOT_USER_ACTION": "ignore",
    "PYTHONUNBUFFERED": "1",
}


def environ(base: Mapping[str, str]) -> Dict[str, str]:
    """`base` with PIP_DEFAULTS for whatever it does not set itself."""
    env = dict(base)
    for name, value in PIP_DEFAULTS.items():
        env.setdefault(name, value)
    return env
