"""Make the places a workload writes to writable for its user, before it starts.

Exactly the directories a job names, and how:
- each is created when missing, then handed to the workload's user with a
  chown of the directory itself; its contents are left alone (the platform
  gives these directories empty; input data is never touched);
- a directory named in `recursive` also has its existing contents handed over
  (links are not followed, see handback.py): the training job's checkpoint directory, whose
  files from an interrupted run the script must overwrite to resume;
- a read-only mount, or a user who cannot reach the directory through its
  parents, is reported with the path and why, never fixed behind the user's
  back (parents are the platform's or the image's to set);
- when smsuper is not root (the image's USER) nothing is chowned: what is not
  writable for that user is reported.
Problems are returned as messages; the job decides how loud they are (the
workload may never write there).
"""

from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterable, List

    from .privileges import Workload


def prepare(directories: Iterable[str], account: Workload, recursive: Iterable[str] = ()) -> List[str]:
    """Make each directory writable for `account`; return what could not be done."""
    problems: List[str] = []
    deep = {os.path.abspath(path) for path in recursive}
    seen = set()
    for directory in directories:
        directory = os.path.abspath(directory)
        if directory in seen:
            continue
        seen.add(directory)
        problem = _prepare_one(directory, account, directory in deep)
        if problem:
            problems.append(problem)
    return problems


def _prepare_one(directory: str, account: Workload, deep: bool) -> str:
    who = account.describe()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        return _cannot(directory, "create", error, account)
    if account.owner is None:
        if not os.access(directory, os.W_OK | os.X_OK):
            return (f"{directory} is not writable for {who} ({_ownership(directory)}), and smsuper cannot change "
                    f"that: it is not root (the image's USER). Make it writable for uid {account.credentials.uid} "
                    f"in the image, or run the container as root")
        return ""
    try:
        os.chown(directory, *account.owner)
        if deep:
            _chown_contents(directory, account.owner)
    except OSError as error:
        return _cannot(directory, f"hand over to {who}", error, account)
    blocked = unreachable(directory, account)
    if blocked:
        return (f"{directory} belongs to {who} but it cannot reach it: {blocked}. Make that directory "
                f"searchable (chmod o+x)")
    return ""


def _chown_contents(directory: str, owner) -> None:
    # Never by path: the checkpoints of an earlier run may hold links to anywhere (handback.py).
    from .handback import chown_tree

    problem = chown_tree(directory, owner)
    if problem:
        from .. import log

        log.warning(f"handing {directory} over: {problem}")


def _cannot(directory: str, action: str, error: OSError, account: Workload) -> str:
    if error.errno == errno.EROFS:
        return f"cannot {action} {directory}: it is on a read-only mount, so the workload cannot write there"
    if error.errno in (errno.EACCES, errno.EPERM) and account.owner is None:
        return (f"cannot {action} {directory}: {error.strerror} (smsuper runs as uid {os.getuid()}, not root; "
                f"create it in the image, writable for that uid)")
    return f"cannot {action} {directory}: {error.strerror or error}"


def _ownership(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError as error:
        return error.strerror or str(error)
    return f"owner uid {info.st_uid}, group {info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}"


def unreachable(path: str, account: Workload) -> str:
    """Why `account` cannot get through some parent of `path` (a missing search bit), or ''."""
    # No exception for uid 0: a workload running as root has no CAP_DAC_OVERRIDE either.
    credentials = account.credentials
    groups = {credentials.gid, *credentials.groups}
    parent = os.path.dirname(path)
    while True:
        try:
            info = os.stat(parent)
        except OSError:
            return ""
        if info.st_uid == credentials.uid:
            bit = stat.S_IXUSR
        elif info.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return f"{parent} is not searchable for it ({_ownership(parent)})"
        if parent == os.path.dirname(parent):
            return ""
        parent = os.path.dirname(parent)


def unreadable(path: str, account: Workload) -> str:
    """Why `account` cannot read `path` (input data, code), or '' (also when it is absent).

    Only reported, never changed: smsuper does not chmod or chown data it was given.
    """
    try:
        info = os.stat(path)
    except OSError:
        return ""
    who = account.describe()
    blocked = unreachable(path, account)
    if blocked:
        return f"{path} cannot be reached by {who}, who runs the workload: {blocked}"
    credentials = account.credentials
    if info.st_uid == credentials.uid:
        shift = 6
    elif info.st_gid in {credentials.gid, *credentials.groups}:
        shift = 3
    else:
        shift = 0
    needed = 0o5 if stat.S_ISDIR(info.st_mode) else 0o4
    if (info.st_mode >> shift) & needed != needed:
        return f"{path} is not readable for {who}, who runs the workload ({_ownership(path)})"
    return ""
