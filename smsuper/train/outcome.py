"""output/success and output/failure, without ever clobbering the script's own.

A script may write output/failure itself, with a better reason than any
stderr tail. smsuper snapshots the file (inode, size, mtime) before the
script starts; a file that appeared or changed meanwhile is the script's and
is left alone. Files left by an earlier run are stale and removed at start,
so a local re-run does not report yesterday's failure.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Tuple

from .. import log
from ..sagemaker.paths import Paths

Snapshot = Optional[Tuple[int, int, int, int]]


def snapshot(path: str) -> Snapshot:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def written_since(path: str, before: Snapshot) -> bool:
    now = snapshot(path)
    return now is not None and now != before


def remove_stale(paths: Paths) -> None:
    for path in (paths.failure_file, paths.success_file):
        try:
            os.unlink(path)
            log.info(f"removed {path} left by an earlier run")
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning(f"cannot remove stale {path}: {error.strerror}")


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".smsuper-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="replace") as stream:
            stream.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write_failure(paths: Paths, text: str, before: Snapshot) -> bool:
    """Write the failure reason unless the script wrote its own; True if written."""
    if written_since(paths.failure_file, before):
        log.info(f"{paths.failure_file} was written by the training program: keeping it")
        return False
    try:
        _write_atomically(paths.failure_file, text)
        return True
    except OSError as error:
        log.error(f"cannot write {paths.failure_file}: {error.strerror or error}")
        return False


def write_success(paths: Paths) -> None:
    """An empty output/success, as the toolkit writes."""
    try:
        _write_atomically(paths.success_file, "")
    except OSError as error:
        log.warning(f"cannot write {paths.success_file}: {error.strerror or error}")
