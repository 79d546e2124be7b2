"""Files in directories the workload can write, handled by root without trusting them.

PID 1 is root with CAP_DAC_OVERRIDE: whatever it opens by a path the workload
could have changed, it opens with powers the workload lacks. A symlink planted
where PID 1 writes makes it write a root-only file; a directory swapped for a
link makes it empty another; a FIFO where it reads blocks its loop for good.
So wherever the workload can write, PID 1 follows these rules:

- the directory itself is reached through parents the workload cannot write
  (its place cannot be swapped), and opened as a directory fd with O_NOFOLLOW;
  every name in it is then used relative to that fd (the *at() calls);
- a file is read only when it opens with O_NOFOLLOW | O_NONBLOCK and fstat
  says it is a regular file, and never more than a bound;
- a file is written only as a new file (O_CREAT | O_EXCL | O_NOFOLLOW, under
  a name nobody can guess) then renamed over the old name: a rename replaces
  a link, it never writes through it;
- removal unlinks names (unlink never follows the last component) and
  descends only into directories opened with O_NOFOLLOW.

Generic init machinery (the serving job and the homes PID 1 makes use it); no
imports beyond os and stat: it runs in PID 1.
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Optional

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would wait for a writer; O_NOCTTY: a planted tty
# must not become PID 1's controlling terminal.
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
MAX_DEPTH = 64  # remove_tree leaves what lies deeper (a workload's bottomless tree must not exhaust PID 1)


class NotRegularFile(OSError):
    """What was found under the name is a FIFO, a device, a socket or a directory."""


def open_directory(path: str, dir_fd: Optional[int] = None) -> int:
    """A directory fd for `path` (relative to `dir_fd` when given); refuses a link (ELOOP/ENOTDIR)."""
    return os.open(path, DIRECTORY, dir_fd=dir_fd)


def open_regular(name: str, dir_fd: Optional[int] = None) -> int:
    """An fd for reading a regular file, never blocking on a FIFO nor following a link."""
    fd = os.open(name, _READ, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(name: str, limit: int, dir_fd: Optional[int] = None) -> bytes:
    """At most `limit` bytes of a regular file."""
    fd = open_regular(name, dir_fd)
    try:
        return read_up_to(fd, limit)
    finally:
        os.close(fd)


def read_up_to(fd: int, limit: int) -> bytes:
    """At most `limit` more bytes from `fd`, fewer at its end."""
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def replace_file(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """Put `data` under `name` atomically: a new file, then a rename over whatever was there.

    Raises OSError (ENOSPC on a full disk, ...); nothing is left behind then.
    """
    temporary = f".{name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(temporary, _CREATE, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink(temporary, dir_fd)
        raise


def unlink(name: str, dir_fd: Optional[int] = None) -> None:
    """Remove a name that is not a directory; absent is fine."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def empty_directory(name: str, dir_fd: int, owner_uid: Optional[int] = None) -> bool:
    """Unlink every non-directory entry of the directory `name` (relative to `dir_fd`).

    False when `name` is not a real directory (a link, say), or not owned by `owner_uid`:
    then nothing is touched.
    """
    try:
        fd = open_directory(name, dir_fd)
    except OSError:
        return False
    try:
        if owner_uid is not None and os.fstat(fd).st_uid != owner_uid:
            return False
        for entry in os.listdir(fd):
            try:
                os.unlink(entry, dir_fd=fd)
            except OSError:
                pass  # a sub-directory, or gone already
        return True
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Remove `path` and everything below it, never following a link (shutil.rmtree without
    importing shutil into PID 1). `path`'s parents must be out of the workload's reach."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        top = open_directory(parent)
    except OSError:
        return
    try:
        _remove(top, name, MAX_DEPTH)
    finally:
        os.close(top)


def _remove(dir_fd: int, name: str, depth: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    except OSError:
        return
    if depth <= 0:
        return
    try:
        fd = open_directory(name, dir_fd)
    except OSError:
        return  # swapped for a link or a file since: not ours to follow
    try:
        for entry in os.listdir(fd):
            _remove(fd, entry, depth - 1)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        pass
