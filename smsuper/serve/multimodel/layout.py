"""Where each model's files live, inside the serve job's runtime directory (serve/runtime.py).

  ROOT/models.sock            PID 1's management API (nginx proxies /models here)
  ROOT/models/                PID 1's: root-owned, 0711
  ROOT/models/NAME/           PID 1's: the model's own runtime directory (same layout as ROOT)
  ROOT/models/NAME/serving    PID 1's marker: nginx routes invocations to NAME while it exists
  ROOT/models/NAME/shared/    the model's processes': ready, load-failure.json
  ROOT/shared/m/NAME          the model's gunicorn socket: a unix socket's path holds at most
                              107 bytes, so it is kept short (a 64-character hash fits with the
                              default ROOT); a longer name is refused, naming the limit

NAME is always a valid name (names.py): these paths never leave ROOT/models and ROOT/shared/m.
"""

from __future__ import annotations

import os

from ..runtime import RuntimeDir
from . import names

FAILURE_FILE = "load-failure.json"
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with its NUL
SOCKETS = "m"


def management_socket(root: RuntimeDir) -> str:
    return os.path.join(root.root, "models.sock")


def models_dir(root: RuntimeDir) -> str:
    return os.path.join(root.root, "models")


def model_runtime(root: RuntimeDir, name: str) -> RuntimeDir:
    if not names.valid(name):
        raise ValueError(f"not a model name: {name!r}")
    return RuntimeDir(os.path.join(models_dir(root), name))


def sockets_dir(root: RuntimeDir) -> str:
    return os.path.join(root.shared, SOCKETS)


def model_socket(root: RuntimeDir, name: str) -> str:
    return os.path.join(sockets_dir(root), name)


def longest_name(root: RuntimeDir) -> int:
    """The longest model name whose socket path fits in a unix socket address."""
    return SOCKET_PATH_MAX - len(os.fsencode(model_socket(root, "")))


def serving_marker(model: RuntimeDir) -> str:
    return os.path.join(model.root, "serving")


def failure_file(model: RuntimeDir) -> str:
    return os.path.join(model.shared, FAILURE_FILE)
