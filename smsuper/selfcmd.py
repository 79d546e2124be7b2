"""How to start another smsuper process from the same code.

Children such as the gunicorn master must run the same bundled libraries as
PID 1, so they are started as `python /smsuper.pyz _word` (or, when smsuper
runs from a source tree, `python -m smsuper _word`).
"""

from __future__ import annotations

import os
import sys

from . import settings

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List


def self_argv(word: str, *args: str) -> List[str]:
    main = sys.modules.get("__main__")
    origin = getattr(main, "__file__", "") or ""
    archive = settings.value("SMSUPER_PYZ") or _archive_of(origin)
    if archive:
        return [sys.executable, archive, word, *args]
    return [sys.executable, "-m", "smsuper", word, *args]


def _archive_of(path: str) -> str:
    """The .pyz that `path` lives in (zip or its extracted copy), or ''."""
    if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]) and not sys.argv[0].endswith(".py"):
        return os.path.abspath(sys.argv[0])
    return ""
