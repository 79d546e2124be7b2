"""Which program is the training job, and how it is started.

Resolution order, as the toolkit and the seed's layout expect:
1. SAGEMAKER_TRAINING_MODULE (`module:function`, set by framework images):
   the function is called in the image's Python; the framework runs the
   user's script itself.
2. The program from SAGEMAKER_PROGRAM, else the sagemaker_program
   hyperparameter, looked up in the code directory:
   - a code directory with setup.py or pyproject.toml is a package: it is
     pip-installed and the program runs as `python -m module`;
   - `*.py` runs as `python script.py ARGS`;
   - a directory with __main__.py runs as `python -m dir ARGS`;
   - anything else runs directly when executable, else through its #! line
     (or /bin/sh for *.sh): the user's files are never chmod-ed.
3. Nothing configured: an executable named `train` on PATH (the seed's layout).
Nothing found raises EntryPointNotFound listing what was looked for, where.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

PACKAGE_MARKERS = ("setup.py", "pyproject.toml")
DEFAULT_PROGRAM_ON_PATH = "train"

# Kinds of entry point; "python-ish" kinds get PYTHONUNBUFFERED and the code
# directory first on PYTHONPATH.
SCRIPT = "python-script"
PACKAGE = "python-package"
MODULE_DIR = "python-module-dir"
FRAMEWORK = "framework-module"
EXECUTABLE = "executable"
INTERPRETED = "interpreted"  # not executable: run through its #! line or /bin/sh
ON_PATH = "on-path"

PYTHON_KINDS = (SCRIPT, PACKAGE, MODULE_DIR, FRAMEWORK)

# Runs `module:function` without putting user text into Python source: the
# names arrive as argv. The return value is ignored, as the toolkit does.
FRAMEWORK_BOOTSTRAP = (
    "import importlib, sys; "
    "module, function = sys.argv[1], sys.argv[2]; del sys.argv[1:3]; "
    "getattr(importlib.import_module(module), function)()"
)


class EntryPointError(Exception):
    """The entry point cannot be found or cannot be started."""

    exit_code = 127


class EntryPointNotFound(EntryPointError):
    exit_code = 127


class EntryPointNotExecutable(EntryPointError):
    exit_code = 126


@dataclass(frozen=True)
class Configured:
    """A value and where it was configured, e.g. ("train.py", "SAGEMAKER_PROGRAM")."""

    value: str
    origin: str


@dataclass(frozen=True)
class EntryPoint:
    kind: str
    target: str  # script or executable path, module name, or module:function
    code_dir: Optional[str]  # cwd of the script and head of PYTHONPATH; None: inherit
    name: str  # how messages name it ("train.py")
    configured: Optional[str] = None  # the program as configured (SM_USER_ENTRY_POINT)
    interpreter: Sequence[str] = field(default_factory=tuple)  # for INTERPRETED
    install_package: Optional[str] = None  # directory to pip-install first (PACKAGE)
    python_shebang: bool = False  # an executable whose #! runs Python

    @property
    def is_python(self) -> bool:
        """Started by the image's Python: gets the code dir first on PYTHONPATH."""
        return self.kind in PYTHON_KINDS

    @property
    def speaks_python(self) -> bool:
        """Any Python program, including #! ones: gets PYTHONUNBUFFERED=1."""
        return self.is_python or self.python_shebang

    def command(self, python: str, args: Sequence[str]) -> List[str]:
        """The argv that starts this entry point with `args`."""
        if self.kind == SCRIPT:
            return [python, self.target, *args]
        if self.kind in (PACKAGE, MODULE_DIR):
            return [python, "-m", self.target, *args]
        if self.kind == FRAMEWORK:
            module, function = self.target.split(":", 1)
            return [python, "-c", FRAMEWORK_BOOTSTRAP, module, function.rstrip("()"), *args]
        if self.kind == INTERPRETED:
            return [*self.interpreter, self.target, *args]
        return [self.target, *args]


def module_name(program: str) -> str:
    """train.py -> train; pkg/train.py -> pkg.train (what `python -m` takes)."""
    name = program[:-3] if program.endswith(".py") else program
    return name.strip("/").replace("/", ".")


def shebang(path: str) -> Optional[List[str]]:
    """The interpreter and its optional argument from a #! line."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").strip().split(None, 1)
    return words or None


def _listing(directory: str, limit: int = 12) -> str:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return f"the directory {directory} does not exist"
    except OSError as error:
        return f"the directory {directory} cannot be listed ({error.strerror})"
    if not names:
        return f"the directory {directory} is empty"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return f"{directory} holds: {shown}"


def _is_package_dir(code_dir: str) -> bool:
    return any(os.path.isfile(os.path.join(code_dir, marker)) for marker in PACKAGE_MARKERS)


def _program(program: Configured, code_dir: str, note: str) -> EntryPoint:
    configured = program.value
    path = configured if os.path.isabs(configured) else os.path.join(code_dir, configured)
    name = os.path.basename(configured.rstrip("/")) or configured
    if _is_package_dir(code_dir) and not os.path.isdir(path):
        # The toolkit's package layout: install the code directory, run the
        # program as a module of it. Existence is left to `python -m`, whose
        # "No module named ..." is a clear failure, because a src/ layout
        # puts the module somewhere this cannot guess.
        return EntryPoint(PACKAGE, module_name(configured), code_dir, name, configured,
                          install_package=code_dir)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "__main__.py")):
            return EntryPoint(MODULE_DIR, module_name(configured), code_dir, name, configured)
        raise EntryPointNotFound(f"{program.origin}={configured}: {path} is a directory without "
                                 "__main__.py, so it cannot be run")
    if not os.path.isfile(path):
        where = f" ({note})" if note else ""
        raise EntryPointNotFound(f"{program.origin}={configured}: no such file {path}{where}; "
                                 f"{_listing(os.path.dirname(path) or code_dir)}")
    if configured.endswith(".py"):
        return EntryPoint(SCRIPT, path, code_dir, name, configured)
    if os.access(path, os.X_OK):
        return EntryPoint(EXECUTABLE, path, code_dir, name, configured,
                          python_shebang=_runs_python(shebang(path)))
    interpreter = shebang(path) or (["/bin/sh"] if configured.endswith(".sh") else None)
    if not interpreter:
        raise EntryPointNotExecutable(f"{program.origin}={configured}: {path} is not executable and "
                                      "has no #! line; make it executable, or name a .py or .sh file")
    return EntryPoint(INTERPRETED, path, code_dir, name, configured, interpreter=tuple(interpreter),
                      python_shebang=_runs_python(interpreter))


def _runs_python(interpreter: Optional[Sequence[str]]) -> bool:
    """#!/usr/bin/python3, #!/usr/bin/env python: a Python program in disguise,
    which needs PYTHONUNBUFFERED as much as a .py file does."""
    return any(os.path.basename(word).startswith("python") for word in (interpreter or [])[:2])


def resolve(program: Optional[Configured], framework_module: Optional[str], code_dir: str,
            search_path: str, code_dir_note: str = "") -> EntryPoint:
    """Find the entry point; raise EntryPointNotFound listing what was looked for."""
    if framework_module:
        return EntryPoint(FRAMEWORK, framework_module, code_dir, framework_module,
                          program.value if program else None)
    if program and program.value.strip():
        return _program(program, code_dir, code_dir_note)
    found = shutil.which(DEFAULT_PROGRAM_ON_PATH, path=search_path)
    if found:
        return EntryPoint(ON_PATH, found, None, DEFAULT_PROGRAM_ON_PATH, None,
                          python_shebang=_runs_python(shebang(found)))
    directories = [d for d in search_path.split(os.pathsep) if d] or ["(PATH is empty)"]
    lines = [
        "no training program found. smsuper looked for:",
        "  - SAGEMAKER_PROGRAM: unset",
        "  - the sagemaker_program hyperparameter: absent from hyperparameters.json",
        "  - SAGEMAKER_TRAINING_MODULE: unset",
        f"  - an executable named `{DEFAULT_PROGRAM_ON_PATH}` on PATH, in: {', '.join(directories)}: none",
    ]
    if code_dir_note:
        lines.append(f"  ({code_dir_note})")
    lines.append(f"Set SAGEMAKER_PROGRAM (or the sagemaker_program hyperparameter) to a script in "
                 f"{code_dir}, or install an executable named `{DEFAULT_PROGRAM_ON_PATH}` on PATH.")
    raise EntryPointNotFound("\n".join(lines))
