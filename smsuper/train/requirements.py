"""pip installs that must finish before the script: requirements.txt, or the
code directory itself when it is a package (setup.py / pyproject.toml).

pip runs the way usercode/pip.py says, its output streamed like the script's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from ..usercode import pip
from ..usercode.pip import REQUIREMENTS_FILE
from . import entrypoint as ep


@dataclass(frozen=True)
class Install:
    argv: List[str]
    cwd: str
    env: Dict[str, str]
    what: str  # for messages: "pip install -r requirements.txt"


def plan(entry: ep.EntryPoint, python: str, enabled: bool, environ: Mapping[str, str]) -> Optional[Install]:
    """The pip run this entry point needs first, or None."""
    if entry.kind in (ep.FRAMEWORK, ep.ON_PATH) or not entry.code_dir:
        return None  # a framework module installs its own; `train` on PATH has no code dir
    has_requirements = os.path.isfile(os.path.join(entry.code_dir, REQUIREMENTS_FILE))
    env = pip.environ(environ)
    if entry.install_package:
        args = ["install", "."] + (["-r", REQUIREMENTS_FILE] if has_requirements and enabled else [])
    elif has_requirements and enabled:
        args = ["install", "-r", REQUIREMENTS_FILE]
    else:
        return None
    return Install(argv=[python, "-m", "pip", *args], cwd=entry.code_dir, env=env,
                   what="pip " + " ".join(args))
