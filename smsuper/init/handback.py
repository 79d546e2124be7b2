"""Chown a tree the workload wrote, as root, without ever acting outside it.

Two uses:
- before a job, `chown_tree` hands a directory's existing contents to the
  workload's user (training's checkpoints from an interrupted run);
- after a job, `Handover.give_back` returns what smsuper handed to the
  workload, and everything the workload wrote there, to the directory's
  original owner (`docker run -v test_dir:/opt/ml IMAGE train` leaves the
  host's user able to remove the old model).

The tree may hold anything the workload made, so the walk trusts no name:
every directory is opened with O_DIRECTORY|O_NOFOLLOW relative to its
parent's descriptor and checked with fstat (a name swapped for a link fails
to open, one swapped for another directory fails the inode check); regular
files are opened with O_NOFOLLOW|O_NONBLOCK and chowned through their own
descriptor; links and other entries are chowned themselves
(follow_symlinks=False), never their targets. A regular file with more than
one hard link may be a link to a file outside (/etc/shadow) and is left
alone; a directory on another device (a mount point) is not entered; the
walk stops after MAX_ENTRIES entries or MAX_DEPTH levels, with a warning.
Errors on one entry are counted, never fatal: this runs in PID 1.
"""

from __future__ import annotations

import os
import stat

from .. import log

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterable, List, Optional, Tuple

MAX_ENTRIES = 1_000_000
MAX_DEPTH = 64
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class _Walk:
    __slots__ = ("owner", "only_uid", "device", "entries", "changed", "skipped", "truncated")

    def __init__(self, owner: Tuple[int, int], only_uid: Optional[int], device: int):
        self.owner = owner
        self.only_uid = only_uid  # chown only what this uid owns (None: everything)
        self.device = device
        self.entries = 0
        self.changed = 0
        self.skipped: List[str] = []
        self.truncated = False

    def wanted(self, info: os.stat_result) -> bool:
        if (info.st_uid, info.st_gid) == self.owner:
            return False
        return self.only_uid is None or info.st_uid == self.only_uid

    def directory(self, fd: int, where: str, depth: int) -> None:
        info = os.fstat(fd)
        if self.wanted(info):
            os.fchown(fd, *self.owner)
            self.changed += 1
        for name in os.listdir(fd):
            if self.entries >= MAX_ENTRIES:
                self.truncated = True
                return
            self.entries += 1
            try:
                self.entry(fd, name, os.path.join(where, name), depth)
            except OSError as error:
                self.skipped.append(f"{os.path.join(where, name)} ({error.strerror or error})")

    def entry(self, parent: int, name: str, where: str, depth: int) -> None:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            if info.st_dev != self.device:
                self.skipped.append(f"{where} (another filesystem)")
                return
            if depth >= MAX_DEPTH:
                self.truncated = True
                return
            fd = os.open(name, _DIRECTORY, dir_fd=parent)
            try:
                opened = os.fstat(fd)
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                    self.skipped.append(f"{where} (replaced while being read)")
                    return
                self.directory(fd, where, depth + 1)
            finally:
                os.close(fd)
        elif stat.S_ISREG(info.st_mode):
            if not self.wanted(info):
                return
            fd = os.open(name, _FILE, dir_fd=parent)
            try:
                opened = os.fstat(fd)
                if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) or not stat.S_ISREG(opened.st_mode):
                    self.skipped.append(f"{where} (replaced while being read)")
                    return
                if opened.st_nlink > 1:
                    self.skipped.append(f"{where} (a hard link: the same file may live outside)")
                    return
                if self.wanted(opened):
                    os.fchown(fd, *self.owner)
                    self.changed += 1
            finally:
                os.close(fd)
        elif self.wanted(info):
            # A link (chowned itself, never its target), a FIFO or a socket: never opened.
            os.chown(name, *self.owner, dir_fd=parent, follow_symlinks=False)
            self.changed += 1


def chown_tree(path: str, owner: Tuple[int, int], only_uid: Optional[int] = None,
               expect: Optional[Tuple[int, int]] = None) -> str:
    """Give `path` and its tree to `owner` (uid, gid); '' or what went wrong.

    `only_uid`: touch only entries of that uid. `expect`: (st_dev, st_ino) the
    directory must still have (it was swapped for another one otherwise).
    """
    try:
        fd = os.open(path, _DIRECTORY)
    except OSError as error:
        return f"cannot open {path}: {error.strerror or error}"
    try:
        info = os.fstat(fd)
        if expect is not None and (info.st_dev, info.st_ino) != expect:
            return f"{path} is no longer the directory smsuper handed over (it was replaced): left alone"
        walk = _Walk(owner, only_uid, info.st_dev)
        try:
            walk.directory(fd, path, 0)
        except OSError as error:
            walk.skipped.append(f"{path} ({error.strerror or error})")
    finally:
        os.close(fd)
    problems = []
    if walk.truncated:
        problems.append(f"stopped after {walk.entries} entries or {MAX_DEPTH} levels")
    if walk.skipped:
        shown = "; ".join(walk.skipped[:5]) + (f"; and {len(walk.skipped) - 5} more" if len(walk.skipped) > 5 else "")
        problems.append(f"left alone: {shown}")
    return f"{path}: {', '.join(problems)}" if problems else ""


def _original_owner(path: str) -> Optional[Tuple[int, int]]:
    """The owner of `path`, or of its nearest existing parent (what a directory smsuper creates should have)."""
    while True:
        try:
            info = os.lstat(path)
            return info.st_uid, info.st_gid
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


class Handover:
    """Directories handed to the workload's user, to be given back to their owners after the job."""

    __slots__ = ("owners", "identities")

    def __init__(self, directories: Iterable[str]):
        # Before the hand-over: who owns each directory (or the parent it will be created in).
        self.owners = {}
        for directory in directories:
            directory = os.path.abspath(directory)
            owner = _original_owner(directory)
            if owner is not None:
                self.owners[directory] = owner
        self.identities = {}

    def handed(self) -> None:
        """After the hand-over: remember each directory's identity, so a swapped one is left alone."""
        for directory in self.owners:
            try:
                info = os.lstat(directory)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                self.identities[directory] = (info.st_dev, info.st_ino)

    def give_back(self, workload_uid: int) -> None:
        """What `workload_uid` owns in each directory goes back to the directory's original owner."""
        if os.geteuid() != 0:
            return
        for directory, owner in self.owners.items():
            identity = self.identities.get(directory)
            if identity is None or owner[0] == workload_uid:
                continue
            problem = chown_tree(directory, owner, only_uid=workload_uid, expect=identity)
            if problem:
                log.warning(f"giving {directory} back to uid {owner[0]}: {problem}")
            else:
                log.debug(f"gave {directory} back to uid {owner[0]}, gid {owner[1]}")
