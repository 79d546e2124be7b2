"""Who can read what the job was given: the workload's account is chosen to reach its inputs.

Generic init machinery: the jobs name the inputs (training's config, channels
and code; serving's model and code), this module knows nothing of SageMaker.

Inputs arrive with whatever modes their maker chose (the SageMaker SDK's
local mode copies channels into a 0700 root directory and extracts the model
into another; a host user's bind mount may be 0700 of uid 1000). smsuper
never chmods or chowns them, and never starts a workload that could not read
them. So, when smsuper is root:

- SMSUPER_USER unset: the default account (nobody) runs the workload when it
  can read every input. Otherwise the workload runs as the owner of an input
  it could not read (uid 0 for the SDK's root directories: still with no
  capabilities and no_new_privs, as SMSUPER_USER=root), when that owner can
  read every input; a warning names the path and why. When no such account
  exists the job fails at once, naming the path and the fix.
- SMSUPER_USER set: that account is what the person asked for. If it cannot
  read an input the job fails at once, naming the path and the fix.
- smsuper not root (the image's USER): it cannot switch, so an input it
  cannot read fails the job at once.

"Can read" is computed from the owner, group and mode bits of the path and
of every parent (ACLs and network filesystems' own rules are not modelled);
a directory's first MAX_ENTRIES entries are checked too, not deeper: a data
set of millions of files must not cost the start.
"""

from __future__ import annotations

import os
import stat

from .. import log
from . import writable
from .privileges import USER_SETTING, PrivilegeError, Workload
from .spawn import Credentials

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterable, List, Optional, Tuple

MAX_ENTRIES = 1000  # entries checked per input directory


def _problems(paths: Iterable[str], account: Workload) -> List[Tuple[str, str]]:
    """(path, why) for each input `account` cannot read: the path itself, then a directory's entries."""
    found = []
    for path in paths:
        problem = writable.unreadable(path, account)
        if problem:
            found.append((path, problem))
            continue
        for entry in _entries(path):
            problem = writable.unreadable(entry, account)
            if problem:
                found.append((entry, problem))
                break  # one per input is enough to decide and to say
    return found


def _entries(path: str) -> List[str]:
    if os.path.islink(path) or not os.path.isdir(path):
        return []
    found = []
    try:
        with os.scandir(path) as listing:
            for entry in listing:
                if len(found) >= MAX_ENTRIES:
                    break
                found.append(entry.path)
    except OSError:
        pass
    return found


def _owner_account(path: str) -> Optional[Workload]:
    """The owner of `path` as a workload account: no capabilities, no_new_privs, its own group."""
    import pwd

    try:
        uid = os.stat(path).st_uid
    except OSError:
        return None
    try:
        entry = pwd.getpwuid(uid)
        name, home, gid = entry.pw_name, entry.pw_dir, entry.pw_gid
        try:
            groups = tuple(os.getgrouplist(name, gid))
        except OSError:
            groups = (gid,)
    except KeyError:
        name, home, gid, groups = str(uid), "", uid, (uid,)  # never root's group for a uid the image lacks
    credentials = Credentials(uid, gid, groups, drop_capabilities=True, no_new_privs=True)
    return Workload(credentials, name, home, switches=True)


def _fix(path: str, account: Workload) -> str:
    return (f"make {path} readable for uid {account.credentials.uid} (chmod o+rX, or a group it belongs to) "
            f"where it is made")


def choose(account: Workload, inputs: Iterable[str], explicit: bool) -> Workload:
    """The account that runs the workload, able to read every one of `inputs`.

    `account` comes from SMSUPER_USER (`explicit`: the variable was set).
    Raises PrivilegeError, naming the path and the fix, when no acceptable
    account can read them.
    """
    inputs = [path for path in inputs if path]
    problems = _problems(inputs, account)
    if not problems:
        return account
    path, why = problems[0]
    if not account.switches:
        raise PrivilegeError(
            f"{why}. smsuper runs as uid {account.credentials.uid} (the image's USER), not root, so it cannot run "
            f"the workload as anyone who could: {_fix(path, account)}, or run the container as root")
    if explicit:
        spec = os.environ.get(USER_SETTING, "").strip()
        raise PrivilegeError(
            f"{why}. {USER_SETTING}={spec} asks for that account, so smsuper does not pick another: "
            f"{_fix(path, account)}, or unset {USER_SETTING} so that smsuper runs the workload as an account "
            f"that can read it (the owner of the input, without any capability)")
    tried = set()
    for unreadable_path, _ in problems:
        owner = _owner_account(unreadable_path)
        if owner is None or owner.credentials.uid in tried:
            continue
        tried.add(owner.credentials.uid)
        if not _problems(inputs, owner):
            _announce(owner, unreadable_path, why, account)
            return owner
    raise PrivilegeError(
        f"{why}, and no single account can read every input (their owners differ). {_fix(path, account)}, "
        f"or set {USER_SETTING} to an account that can read them all")


def _announce(owner: Workload, path: str, why: str, default: Workload) -> None:
    uid = owner.credentials.uid
    who = "uid 0 without any capability and with no_new_privs, as SMSUPER_USER=root" if uid == 0 else \
        f"{owner.describe()}, the owner of {path}, without any capability"
    log.warning(f"{why}. The workload runs as {who}, instead of {default.describe()}, so that it can read "
                f"its input (smsuper never changes the modes of input data). To run it as {default.name}, make "
                f"{path} readable for uid {default.credentials.uid}; to choose this account without a warning, set "
                f"{USER_SETTING}={'root' if uid == 0 else uid}")
