"""Where the user's code is: /opt/ml/code, or a local sagemaker_submit_directory.

A local directory is used in place. A local .tar.gz (what the SDK uploads as
sourcedir.tar.gz) is extracted: into /opt/ml/code when that is absent or
empty, as the toolkit does, so paths the script builds from /opt/ml/code keep
working; otherwise into a fresh private directory, never over the image's
code. Members that would land outside the target (absolute names, "..",
links pointing out, devices) are refused. Remote URIs (s3://) are not
downloaded: smsuper has no AWS client, so such code must already be in
/opt/ml/code, and the not-found message says so.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Optional


class SourceDirError(ValueError):
    """The configured submit directory cannot be used."""


@dataclass(frozen=True)
class CodeDir:
    path: str  # the directory the entry point is looked up in (and runs from)
    note: str = ""  # why this directory, for messages ("extracted from ...")
    remote: Optional[str] = None  # an s3:// submit directory that was not downloaded


def is_remote(location: str) -> bool:
    return "://" in location


def _is_archive(path: str) -> bool:
    return os.path.isfile(path) and tarfile.is_tarfile(path)


def _is_empty_or_absent(directory: str) -> bool:
    try:
        return not os.listdir(directory)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


def _inside(root: str, target: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(target)]) == root


def _check_member(member: tarfile.TarInfo, target: str) -> None:
    name = member.name
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise SourceDirError(f"refusing archive member {name!r}: it points outside the code directory")
    if member.isdev():
        raise SourceDirError(f"refusing archive member {name!r}: device files are not code")
    if member.issym() or member.islnk():
        link = member.linkname
        base = os.path.dirname(os.path.join(target, name)) if member.issym() else target
        if os.path.isabs(link) or not _inside(target, os.path.join(base, link)):
            raise SourceDirError(f"refusing archive member {name!r}: its link {link!r} points outside "
                                 "the code directory")


def extract(archive: str, target: str) -> None:
    """Extract `archive` into `target`, refusing members that escape it."""
    os.makedirs(target, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, target)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=members, filter="data")
            else:  # Python without extraction filters: members were checked above
                tar.extractall(target, members=members)
    except (tarfile.TarError, OSError) as error:
        raise SourceDirError(f"cannot extract {archive}: {error}") from None


def locate(submit_directory: Optional[str], origin: str, code_dir: str) -> CodeDir:
    """The directory holding the user's code. `origin` names where the
    submit directory was configured, for messages."""
    if not submit_directory:
        return CodeDir(code_dir)
    if is_remote(submit_directory):
        return CodeDir(code_dir, note=f"{origin} {submit_directory} is not downloaded by smsuper",
                       remote=submit_directory)
    location = os.path.abspath(submit_directory)
    if os.path.isdir(location):
        return CodeDir(location, note=f"from {origin}")
    if _is_archive(location):
        target = code_dir if _is_empty_or_absent(code_dir) else tempfile.mkdtemp(prefix="smsuper-code-")
        extract(location, target)
        os.chmod(target, 0o755)  # mkdtemp's 0700 would hide the code from the unprivileged script
        return CodeDir(target, note=f"extracted from {location} ({origin})")
    if os.path.exists(location):
        raise SourceDirError(f"{origin}={submit_directory}: neither a directory nor a .tar.gz archive")
    raise SourceDirError(f"{origin}={submit_directory}: no such directory or archive")
