"""Where the user's serving program is: the handler module's directories and path.

Read by PID 1 (job.py checks, before starting anything, that a handler module
exists, so a missing one is a clear start failure rather than N workers each
failing to load) and by the workers (worker/service.py imports it; worker/user_app.py
puts the same directories on sys.path). Kept apart from worker/handlers.py so
PID 1 does not import the codecs and the rest of the inference code.
"""

from __future__ import annotations

import os
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List, Sequence


class HandlerError(Exception):
    """The user's module cannot be found or used; the message says why and where we looked."""


def code_directories(base_dir: str, submit_directory: str = "") -> List[str]:
    directories = []
    if submit_directory and "://" not in submit_directory and os.path.isdir(submit_directory):
        directories.append(submit_directory)
    directories += [os.path.join(base_dir, "model", "code"), os.path.join(base_dir, "code")]
    return directories


def locate(program: str, directories: Sequence[str]) -> str:
    """The path of the handler module, or HandlerError naming every place looked in."""
    names = [program] if program.endswith(".py") else [program + ".py", program]
    for directory in directories:
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    where = ", ".join(directories)
    raise HandlerError(f"no handler module {names[0]} in {where}: put it there, set SAGEMAKER_PROGRAM "
                       f"to its name, or serve your own WSGI app with SMSUPER_APP=module:attr")
