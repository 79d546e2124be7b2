"""Unpack a code archive (sourcedir.tar.gz) without letting it write outside its target.

Members that would land outside the target (absolute names, "..", links
pointing out) and device files are refused before anything is written; where
Python has tarfile's `data` filter it applies too (no setuid bits, no
ownership taken from the archive).
"""

from __future__ import annotations

import os
import tarfile
from typing import BinaryIO, Union


class ArchiveError(ValueError):
    """The archive cannot be unpacked, or holds a member that would escape."""


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and tarfile.is_tarfile(path)


def _inside(root: str, target: str) -> bool:
    root = os.path.realpath(root)
    return os.path.commonpath([root, os.path.realpath(target)]) == root


def _check_member(member: tarfile.TarInfo, target: str) -> None:
    name = member.name
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ArchiveError(f"refusing archive member {name!r}: it points outside the code directory")
    if member.isdev():
        raise ArchiveError(f"refusing archive member {name!r}: device files are not code")
    if member.issym() or member.islnk():
        link = member.linkname
        base = os.path.dirname(os.path.join(target, name)) if member.issym() else target
        if os.path.isabs(link) or not _inside(target, os.path.join(base, link)):
            raise ArchiveError(f"refusing archive member {name!r}: its link {link!r} points outside "
                               "the code directory")


def extract(source: Union[str, BinaryIO], target: str, name: str = "") -> None:
    """Unpack `source` (a path, or an open seekable file) into `target`; `name`
    says in messages which archive it was (default: the path)."""
    name = name or (source if isinstance(source, str) else "the archive")
    try:
        os.makedirs(target, exist_ok=True)
        opened = tarfile.open(source, "r:*") if isinstance(source, str) else tarfile.open(fileobj=source, mode="r:*")
        with opened as tar:
            members = tar.getmembers()
            for member in members:
                try:
                    _check_member(member, target)
                except ArchiveError as error:
                    raise ArchiveError(f"{name}: {error}") from None
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, members=members, filter="data")
            else:  # Python without extraction filters: members were checked above
                tar.extractall(target, members=members)
    except (tarfile.TarError, OSError) as error:
        raise ArchiveError(f"cannot extract {name} into {target}: {error}") from None
