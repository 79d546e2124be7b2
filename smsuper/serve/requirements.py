"""pip install of the handler module's requirements.txt, before any worker starts.

It runs as a supervised child of PID 1 (so a SIGTERM during the install stops
it cleanly), the way usercode/pip.py says.
"""

from __future__ import annotations

import os
import sys
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Mapping, Optional, Tuple

from ..usercode import pip
from ..usercode.pip import REQUIREMENTS_FILE


def plan(code_dir: str, enabled: bool, environ: Mapping[str, str]) -> Optional[Tuple[List[str], Dict[str, str]]]:
    """(argv, env) of the pip run, or None when there is nothing to install."""
    if not enabled or not os.path.isfile(os.path.join(code_dir, REQUIREMENTS_FILE)):
        return None
    return [sys.executable or "python3", "-m", "pip", "install", "-r", REQUIREMENTS_FILE], pip.environ(environ)
