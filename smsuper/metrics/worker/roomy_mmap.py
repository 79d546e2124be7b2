"""prometheus_client's multiprocess files, with their room taken before it is used.

prometheus_client (0.26, pinned) extends each process's file with truncate(),
which makes a sparse file, and writes into it through mmap. On a full disk the
first write to a page that has no block behind it is a SIGBUS: the worker dies
in the middle of a request, is replaced, dies again at its first request, and
clients get 502s. Metrics must never cost requests, so in every gunicorn
process its files are made by RoomyMmapedDict, which reserves the blocks
(posix_fallocate) before the mmap can touch them:

- a file that cannot get its first blocks is not made at all; that process
  records nothing of that kind (counters, histograms, ...) for its lifetime;
- an entry (a new label combination) that would need the file to grow and
  finds no room is dropped; the others keep being recorded.

Either way the process logs one warning and leaves an empty `.no-room-<pid>`
in the directory, which PID 1 counts (smsuper_metrics_dropped_processes_total).
"""

from __future__ import annotations

import errno
import os
from typing import Iterator, Tuple

from prometheus_client import mmap_dict, values

from ... import log
from ..multiproc import NO_ROOM_PREFIX

_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_warned_in = [0]  # the pid that has warned already (a forked worker warns for itself)


class _NoRoom(Exception):
    pass


def install() -> None:
    """Make prometheus_client open its files through this module (values.py looks the name up
    at each call, when a process makes its first value of a kind)."""
    values.MmapedDict = open_file


def open_file(filename: str, read_mode: bool = False):
    try:
        return RoomyMmapedDict(filename, read_mode)
    except _NoRoom:
        _dropped(filename)
        return _Discarding()


def _reserve(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in _NO_ROOM:
            raise _NoRoom() from None
        # A filesystem that cannot preallocate: as prometheus_client would have it.


class RoomyMmapedDict(mmap_dict.MmapedDict):
    def __init__(self, filename: str, read_mode: bool = False):
        fd = os.open(filename, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                _reserve(fd, max(size, mmap_dict._INITIAL_MMAP_SIZE))
            except _NoRoom:
                if size == 0:
                    os.unlink(filename)  # no empty file for readers to stumble on
                raise
        finally:
            os.close(fd)
        super().__init__(filename, read_mode)

    def _init_value(self, key: str) -> None:
        encoded = key.encode("utf-8")
        needed = self._used + 4 + len(encoded) + (8 - (len(encoded) + 4) % 8) + 16  # as the parent packs it
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity > self._capacity:
            _reserve(self._f.fileno(), capacity)  # the parent then truncates to what is already there
        super()._init_value(key)

    def read_value(self, key: str) -> Tuple[float, float]:
        try:
            return super().read_value(key)
        except _NoRoom:
            _dropped(self._fname)
            return 0.0, 0.0

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        try:
            super().write_value(key, value, timestamp)
        except _NoRoom:
            _dropped(self._fname)


class _Discarding:
    """Stands for a file that could not be made: records nothing."""

    def read_value(self, key: str) -> Tuple[float, float]:
        return 0.0, 0.0

    def write_value(self, key: str, value: float, timestamp: float) -> None:
        pass

    def read_all_values(self) -> Iterator[Tuple[str, float, float]]:
        return iter(())

    def close(self) -> None:
        pass


def _dropped(filename: str) -> None:
    pid = os.getpid()
    if _warned_in[0] == pid:
        return
    _warned_in[0] = pid
    directory = os.path.dirname(filename)
    log.warning(f"gunicorn process {pid} has no room for its metrics in {directory} (its filesystem is full): "
                f"some of its metrics are dropped, requests are served as before")
    try:
        os.close(os.open(os.path.join(directory, f"{NO_ROOM_PREFIX}{pid}"),
                         os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    except OSError:
        pass  # not even an inode left: the warning is all there is
