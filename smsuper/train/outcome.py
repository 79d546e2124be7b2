"""output/success and output/failure, without ever clobbering the script's own.

A script may write output/failure itself, with a better reason than any
stderr tail. smsuper snapshots the file (inode, size, mtime) before the
script starts; a file that appeared or changed meanwhile is the script's and
is left alone. Files left by an earlier run are stale and removed at start,
so a local re-run does not report yesterday's failure. The output directory
is the workload's: a link, FIFO or hard link found at output/failure is no
reason of the script's and is replaced, and PID 1 writes only through a
descriptor of the directory (see _write_atomically).
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Tuple

from .. import log
from ..sagemaker.paths import Paths

Snapshot = Optional[Tuple[int, int, int, int]]


def snapshot(path: str) -> Snapshot:
    # lstat: a link planted at output/failure is judged as a link, never by its target.
    try:
        status = os.lstat(path)
    except OSError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def written_since(path: str, before: Snapshot) -> bool:
    now = snapshot(path)
    return now is not None and now != before


def _own_file(path: str) -> str:
    """'' when `path` is a plain file the script may have written itself, else what it is instead.

    A link (to a root-only file, say) or a FIFO is no failure reason: whoever
    reads output/failure would get the target's text, or hang.
    """
    try:
        status = os.lstat(path)
    except OSError:
        return ""
    if stat.S_ISLNK(status.st_mode):
        return "a symbolic link"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if status.st_nlink > 1:
        return "a hard link to another file"
    return ""


def remove_stale(paths: Paths) -> None:
    for path in (paths.failure_file, paths.success_file):
        try:
            os.unlink(path)
            log.info(f"removed {path} left by an earlier run")
        except FileNotFoundError:
            pass
        except OSError as error:
            log.warning(f"cannot remove stale {path}: {error.strerror}")


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_directory(directory: str) -> int:
    """A descriptor of `directory` (never through a link), made when missing.

    A directory PID 1 makes belongs to the owner of its parent, as the rest
    of a host's mounted directory does.
    """
    try:
        return os.open(directory, _DIRECTORY)
    except FileNotFoundError:
        pass
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, _DIRECTORY)
    if os.geteuid() == 0:
        try:
            parent = os.stat(os.path.dirname(directory))
            os.fchown(fd, parent.st_uid, parent.st_gid)
        except OSError:
            pass
    return fd


def _write_atomically(path: str, text: str) -> None:
    """Write a temporary file in the directory's descriptor, then rename it over `path`.

    Nothing is opened by name but a new file (O_EXCL|O_NOFOLLOW), and the
    rename replaces whatever the name held (a link is replaced, not followed).
    The file belongs to the directory's owner (the host's user, locally).
    """
    directory_fd = _open_directory(os.path.dirname(path))
    name = os.path.basename(path)
    temporary = f".smsuper-{name}-{os.urandom(6).hex()}"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=directory_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace", closefd=False) as stream:
                stream.write(text)
            os.fchmod(fd, 0o644)
            if os.geteuid() == 0:
                folder = os.fstat(directory_fd)
                os.fchown(fd, folder.st_uid, folder.st_gid)
        finally:
            os.close(fd)
        os.replace(temporary, name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=directory_fd)
        except OSError:
            pass
        raise
    finally:
        os.close(directory_fd)


def write_failure(paths: Paths, text: str, before: Snapshot) -> bool:
    """Write the failure reason unless the script wrote its own; True if written."""
    if written_since(paths.failure_file, before):
        planted = _own_file(paths.failure_file)
        if not planted:
            log.info(f"{paths.failure_file} was written by the training program: keeping it")
            return False
        log.warning(f"{paths.failure_file} is {planted}, not a failure reason: replacing it with smsuper's")
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
