"""One model of a multi-model endpoint, in its own processes (its gunicorn master, then its workers).

The same handler functions and defaults as single-model serving (service.py);
only where things are differs: the model is the directory the platform named
(descending into its one sub-directory when it holds nothing else and that is
not `code/`, as tarballs with a root directory extract), and its code is `code/SAGEMAKER_PROGRAM` inside
it, else the image's handler module. A `code/requirements.txt` beside the model's own
module is installed first, by pip, into the model's own runtime directory (so one
model's pins never change another's, and an unload takes them away), or the load
is refused when SMSUPER_INSTALL_REQUIREMENTS=false. A load failure is reported to PID 1 in
`load-failure.json` with the status the load request gets: 507 for a
MemoryError, 400 when the directory is missing, 500 for anything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from typing import List

from .... import log
from ... import requirements
from ...config import ServeConfig
from ...program import code_directories, locate
from ...runtime import RuntimeDir
from ...worker import codecs
from ...worker.handlers import Handlers, UserCodeError, import_file
from ...worker.service import FAILED, LOADING, READY, ModelService
from .. import layout

NO_ROOM, BAD_REQUEST, LOAD_ERROR = 507, 400, 500


def model_directory(url: str) -> str:
    """`url`, or its only entry when that is a directory (other than the model's `code`)."""
    entries = os.listdir(url)
    if len(entries) == 1 and entries[0] != "code" and os.path.isdir(os.path.join(url, entries[0])):
        return os.path.join(url, entries[0])
    return url


def code_places(model_dir: str, config: ServeConfig) -> List[str]:
    """The model's own code directory first, then the image's."""
    return [os.path.join(model_dir, "code")] + code_directories(config.base_dir, config.submit_directory)


class MultiModelService(ModelService):
    def __init__(self, config: ServeConfig, runtime: RuntimeDir, name: str, url: str):
        super().__init__(config, runtime)
        self.name = name
        self.url = url
        self.model_dir = url
        self.status = LOAD_ERROR  # of the load request, when the load fails

    def load(self) -> None:
        self._status(LOADING, f"model {self.name} is loading")
        step = "finding the model"
        try:
            if not os.path.isdir(self.url):
                self.status = BAD_REQUEST
                raise FileNotFoundError(f"url {self.url} is not a directory")
            self.model_dir = model_directory(self.url)
            path = locate(self.config.program, code_places(self.model_dir, self.config))
            if os.path.dirname(path) == os.path.join(self.model_dir, "code"):
                step = "installing code/requirements.txt"
                self._install(os.path.dirname(path))
            step = "importing the handler module"
            # The handlers' context names this model's directory.
            self.handlers = Handlers(import_file(path), self.config.default_accept, self.config.json_allow_nan,
                                     self.model_dir)
            step = "model_fn"
            codecs.numpy_module()
            self.model = self.handlers.load_model(self.model_dir)
        except BaseException as error:  # SystemExit from a user module is a load failure too
            if isinstance(error, KeyboardInterrupt):
                raise
            self._fail(step, error)
            return
        self.state = READY
        log.info(f"model {self.name} loaded from {self.model_dir} (code: {path})")

    def _install(self, code_dir: str) -> None:
        """pip install -r code/requirements.txt into this model's own directory, then onto sys.path."""
        if not os.path.isfile(os.path.join(code_dir, requirements.REQUIREMENTS_FILE)):
            return
        if not self.config.install_requirements:
            self.status = BAD_REQUEST
            raise RuntimeError(f"{code_dir}/requirements.txt is not installed: SMSUPER_INSTALL_REQUIREMENTS=false "
                               f"on this endpoint. Install it into the image, or turn installs on")
        plan = requirements.plan(code_dir, True, os.environ)
        assert plan is not None
        argv, env = plan
        target = os.path.join(self.runtime.shared, "site-packages")
        log.info(f"model {self.name}: installing {code_dir}/requirements.txt")
        done = subprocess.run(argv + ["--target", target], cwd=code_dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
        output = done.stdout.decode("utf-8", "replace").rstrip()
        if output:
            sys.stderr.write(output + "\n")
        if done.returncode != 0:
            last = output.splitlines()[-1] if output else "no output"
            raise RuntimeError(f"pip install -r {code_dir}/requirements.txt failed (exit {done.returncode}): {last}")
        sys.path.insert(0, target)

    def _fail(self, step: str, error: BaseException) -> None:
        cause = error.error if isinstance(error, UserCodeError) else error
        if isinstance(cause, MemoryError):
            self.status = NO_ROOM
            self.failure = f"model {self.name} ran out of memory while loading ({step})"
        elif step in ("finding the model", "installing code/requirements.txt"):
            self.failure = f"model {self.name}: {cause}"
        else:
            self.failure = f"model {self.name} failed to load ({step}): {type(cause).__name__}: {cause}"
        self.state = FAILED
        detail = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        log.error(f"{self.failure}\n{detail.rstrip()}")
        self.report_failure()

    def report_failure(self) -> None:
        """Tell PID 1 why (it reads this file once this process has exited): written aside, then renamed."""
        body = json.dumps({"status": self.status, "reason": self.failure[:2000]}).encode()
        target = layout.failure_file(self.runtime)
        temporary = target + ".tmp"
        try:
            with open(temporary, "wb") as handle:
                handle.write(body)
            os.replace(temporary, target)
        except OSError as failure:
            log.warning(f"cannot write {target}: {failure}")

