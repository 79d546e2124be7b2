"""Process titles: what `ps` and /proc/PID/cmdline show for smsuper's processes.

setproctitle is a compiled extension: the pyz bootstrap extracts the build for
this interpreter, but it may be missing (running straight from the zip when no
cache directory is usable, an interpreter or platform with no wheel, a libc it
cannot load on). Titles are a convenience, so then set_title does nothing.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

_setter: Optional[Union[Callable[[str], None], bool]] = None  # None: not loaded yet; False: unavailable


def _load() -> Union[Callable[[str], None], bool]:
    try:
        from setproctitle import _setproctitle  # the extension itself, not the no-op fallbacks

        return _setproctitle.setproctitle
    except Exception:  # ImportError, or a dlopen failure on an unexpected libc
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
