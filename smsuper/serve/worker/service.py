"""The model of one process: loading, ready, or failed, and why.

Loading never raises. A model_fn (or import) that fails leaves the process
running in the `failed` state: /invocations answers 500 naming the failure,
/ping keeps failing, and the reason is written to ping-status.json and logged
once for all workers (readiness.first_to_report). Crashing instead would make
gunicorn restart the worker, fail again, and loop.

The services' entries (ping, invoke, execution_parameters: the names the route
table's rows give, serve/routes.py) are the inference side of the seam
(seam.py): a Request in, an Answer out.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, Optional

from ... import log
from .. import readiness
from ..config import ServeConfig
from ..program import code_directories, locate
from ..runtime import RuntimeDir
from . import codecs
from .context import Context
from .errors import ModelLoadFailed, ModelNotReady
from .handlers import Handlers, UserCodeError, call, import_file
from .seam import JSON, Answer, Request

LOADING, READY, FAILED = "loading", "ready", "failed"


class LoadState:
    """What both kinds of user code share: the state, the reason it failed, and
    the status /ping shows while it is not ready (ping-status.json)."""

    def __init__(self, config: ServeConfig, runtime: Optional[RuntimeDir] = None):
        self.config = config
        self.runtime = runtime
        self.state = LOADING
        self.failure = ""

    @property
    def ready(self) -> bool:
        return self.state == READY

    def _status(self, status: str, message: str) -> None:
        if self.runtime is not None:
            write = readiness.write_progress if status == LOADING else readiness.write_status
            try:
                write(self.runtime, status, message)
            except OSError:
                pass


class ModelService(LoadState):
    """Handler functions (style A): the module, its model, and the request path through them."""

    def __init__(self, config: ServeConfig, runtime: Optional[RuntimeDir] = None):
        super().__init__(config, runtime)
        self.handlers: Optional[Handlers] = None
        self.model: Any = None

    def load(self) -> None:
        self._status(LOADING, "the model is loading")
        step = "importing the handler module"
        try:
            path = locate(self.config.program, code_directories(self.config.base_dir, self.config.submit_directory))
            self.handlers = Handlers(import_file(path), self.config.default_accept, self.config.json_allow_nan,
                                     self.config.model_dir)
            step = "model_fn"
            codecs.numpy_module()  # import numpy now, not during the first request
            self.model = self.handlers.load_model(self.config.model_dir)
        except BaseException as error:  # SystemExit from a user module is a load failure too
            if isinstance(error, KeyboardInterrupt):
                raise
            self._fail(step, error)
            return
        self.state = READY
        log.info(f"model loaded from {self.config.model_dir}")

    def _fail(self, step: str, error: BaseException) -> None:
        cause = error.error if isinstance(error, UserCodeError) else error
        if isinstance(error, UserCodeError):
            self.failure = f"the model failed to load: {error}"
        elif step == "model_fn":
            self.failure = f"the model failed to load: {type(cause).__name__}: {cause}"
        else:
            self.failure = f"the model failed to load ({step}): {type(cause).__name__}: {cause}"
        self.state = FAILED
        self._status(FAILED, self.failure)
        if self.runtime is None or readiness.first_to_report(self.runtime, self.failure):
            detail = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
            log.error(f"{self.failure}\n{detail.rstrip()}\n/ping fails and /invocations answers 500 until this is fixed")

    def ping(self, request: Request) -> Answer:
        """/ping in a worker (only without nginx, which answers it from the readiness flag)."""
        if self.state == READY:
            return Answer(b"")
        if self.state == FAILED:
            return Answer.error(503, self.failure)
        return Answer.error(503, "the model is still loading")

    def invoke(self, request: Request) -> Answer:
        if self.state == LOADING:
            raise ModelNotReady("the model is still loading")
        if self.state == FAILED:
            raise ModelLoadFailed(self.failure)
        assert self.handlers is not None
        return self.handlers.invoke(self.model, request)

    def execution_parameters(self, request: Request) -> Answer:
        function = self.handlers.execution_parameters_fn if self.handlers else None
        if function is None:
            parameters = self.config.execution_parameters()
        else:
            parameters = dict(call(function, Context(environ=request.environ, model_dir=self.config.model_dir)))
        return Answer(json.dumps(parameters).encode("utf-8"), JSON)
