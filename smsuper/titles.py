"""Process titles: what `ps` and /proc/PID/cmdline show for smsuper's processes.

setproctitle is a compiled extension: the pyz bootstrap extracts the build for
this interpreter, but it may be missing (running straight from the zip when no
cache directory is usable, an interpreter or platform with no wheel, a libc it
cannot load on). Titles are a convenience, so then set_title does nothing.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Optional, Union

_setter: Optional[Union[Callable[[str], None], bool]] = None  # None: not loaded yet; False: unavailable


def _load() -> Union[Callable[[str], None], bool]:
    # Load the extension by path rather than `import setproctitle`: the package's
    # __init__ imports logging, which costs PID 1 ~2.5 MB of RSS for nothing.
    try:
        import importlib.machinery
        import importlib.util

        for entry in sys.path:
            folder = os.path.join(entry, "setproctitle")
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name.startswith("_setproctitle") and name.endswith(".so"):
                    path = os.path.join(folder, name)
                    loader = importlib.machinery.ExtensionFileLoader("setproctitle._setproctitle", path)
                    spec = importlib.util.spec_from_file_location("setproctitle._setproctitle", path, loader=loader)
                    module = importlib.util.module_from_spec(spec)
                    loader.exec_module(module)
                    return module.setproctitle
        return False
    except Exception:  # a dlopen failure on an unexpected libc, or no extension at all
        return False


def available() -> bool:
    """Whether set_title really changes the title."""
    global _setter
    if _setter is None:
        _setter = _load()
    return _setter is not False


def set_title(text: str) -> bool:
    """Set this process's title; True if it was set, False (silently) if titles are unavailable."""
    if not available():
        return False
    try:
        _setter(text)  # type: ignore[operator]
        return True
    except Exception:
        return False
