"""Where the user's code is: /opt/ml/code, or a sagemaker_submit_directory.

A local directory is used in place. A local .tar.gz (what the SDK uploads as
sourcedir.tar.gz) is extracted: into /opt/ml/code when that is absent or
empty, as the toolkit does, so paths the script builds from /opt/ml/code keep
working; otherwise into a fresh private directory, never over the image's
code. An s3:// URI is downloaded (usercode/remote.py: a child process with
the image's boto3) and extracted into /opt/ml/code, only when that is absent
or empty, as the toolkit does; code already there wins. Archive members that
would land outside the target are refused (usercode/archive.py).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..usercode import remote

# usercode's archive and remote modules (tarfile, the download child's protocol) are imported
# only for code that needs them: a training job whose code sits in /opt/ml/code carries
# neither in PID 1.


class SourceDirError(ValueError):
    """The configured submit directory cannot be used; `kind` and `exit_code` end the job."""

    def __init__(self, message: str, kind: str = "SourceDirError", exit_code: int = 127):
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


@dataclass(frozen=True)
class CodeDir:
    path: str  # the directory the entry point is looked up in (and runs from)
    note: str = ""  # why this directory, for messages ("extracted from ...")
    remote: Optional[str] = None  # an s3:// submit directory that was not downloaded


def is_remote(location: str) -> bool:
    return "://" in location


def extract(archive_path: str, target: str) -> None:
    """Extract `archive_path` into `target`, refusing members that escape it."""
    from ..usercode import archive

    try:
        archive.extract(archive_path, target)
    except archive.ArchiveError as error:
        raise SourceDirError(str(error)) from None


def _remote(location: str, origin: str, code_dir: str, downloader: Optional[remote.Downloader]) -> CodeDir:
    from ..usercode import remote

    if not remote.is_empty_or_absent(code_dir):
        return CodeDir(code_dir, note=f"{origin} {location} is not downloaded ({code_dir} is not empty, and the "
                                      f"code there wins, as in the SageMaker toolkit)", remote=location)
    if not remote.is_s3(location):
        raise SourceDirError(f"{origin}={location}: only s3:// locations are downloaded; put the code in "
                             f"{code_dir} or name a local directory or .tar.gz")
    if downloader is None:
        raise SourceDirError(f"{origin}={location}: {code_dir} is empty and nothing may download the code")
    try:
        remote.provide(location, origin, code_dir, downloader)
    except remote.CodeDownloadError as error:
        raise SourceDirError(str(error), error.kind, error.exit_code) from None
    return CodeDir(code_dir, note=f"downloaded from {location} ({origin})")


def locate(submit_directory: Optional[str], origin: str, code_dir: str,
           downloader: Optional[remote.Downloader] = None) -> CodeDir:
    """The directory holding the user's code. `origin` names where the
    submit directory was configured, for messages; `downloader` fetches
    s3:// code."""
    if not submit_directory:
        return CodeDir(code_dir)
    if is_remote(submit_directory):
        return _remote(submit_directory, origin, code_dir, downloader)
    location = os.path.abspath(submit_directory)
    if os.path.isdir(location):
        return CodeDir(location, note=f"from {origin}")
    from ..usercode import archive, remote

    if archive.is_archive(location):
        target = code_dir if remote.is_empty_or_absent(code_dir) else tempfile.mkdtemp(prefix="smsuper-code-")
        extract(location, target)
        os.chmod(target, 0o755)  # mkdtemp's 0700 would hide the code from the unprivileged script
        return CodeDir(target, note=f"extracted from {location} ({origin})")
    if os.path.exists(location):
        raise SourceDirError(f"{origin}={submit_directory}: neither a directory nor a .tar.gz archive")
    raise SourceDirError(f"{origin}={submit_directory}: no such directory or archive")
