"""pip install of the handler module's requirements.txt, before any worker starts.

It runs as a supervised child of PID 1 (so a SIGTERM during the install stops
it cleanly), in the image's Python, from the code directory so relative paths
in requirements.txt work. The user's own PIP_* variables win over ours.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Mapping, Optional, Tuple

REQUIREMENTS_FILE = "requirements.txt"
PIP_DEFAULTS = {
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
    "PIP_PROGRESS_BAR": "off",
    "PIP_ROOT_USER_ACTION": "ignore",
    "PYTHONUNBUFFERED": "1",
}


def plan(code_dir: str, enabled: bool, environ: Mapping[str, str]) -> Optional[Tuple[List[str], Dict[str, str]]]:
    """(argv, env) of the pip run, or None when there is nothing to install."""
    if not enabled or not os.path.isfile(os.path.join(code_dir, REQUIREMENTS_FILE)):
        return None
    env = dict(environ)
    for name, value in PIP_DEFAULTS.items():
        env.setdefault(name, value)
    return [sys.executable or "python3", "-m", "pip", "install", "-r", REQUIREMENTS_FILE], env
