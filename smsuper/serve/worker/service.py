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
import os
import traceback
from typing import Any, Iterator, Optional

from ... import log
from .. import readiness
from ..config import ServeConfig
from ..program import code_directories, locate
from ..runtime import RuntimeDir
from . import codecs
from .context import Context
from .errors import ModelLoadFailed, ModelNotReady
from .handlers import Handlers, Message, UserCodeError, call, import_file
from .seam import JSON, Answer, Request
from .sessions import SessionStore, serve as serve_in_session

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
        self.sessions: Optional[SessionStore] = None

    def _open_sessions(self) -> None:
        """SAGEMAKER_ENABLE_STATEFUL_SESSIONS: the store in the servers' runtime directory."""
        if not self.config.sessions:
            return
        import tempfile

        place = self.runtime.shared if self.runtime is not None else tempfile.gettempdir()
        self.sessions = SessionStore(os.path.join(place, "sessions"), self.config.sessions_expiration)
        self.sessions.start_sweeping()

    def _start_batching(self) -> None:
        """SMSUPER_BATCH_SIZE > 1: predictions go through this process's Batcher (batching.py)."""
        handlers = self.handlers
        if not self.config.batching or handlers is None:
            return
        if handlers.transform_fn is not None:
            log.warning(f"SMSUPER_BATCH_SIZE={self.config.batch_size} has no effect: the handler module defines "
                        f"transform_fn, which decodes, predicts and encodes each request in one call; define "
                        f"input_fn, predict_fn (or predict_batch_fn) and output_fn to batch")
            return
        from .batching import Batcher

        handlers.batcher = Batcher(self.config.batch_size, self.config.batch_delay,
                                   lambda inputs: handlers.predict_together(inputs, self.model))

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
            self._start_batching()
            step = "opening the session store (SAGEMAKER_ENABLE_STATEFUL_SESSIONS)"
            self._open_sessions()
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
        handlers = self.handlers
        assert handlers is not None
        if self.sessions is None:
            return handlers.invoke(self.model, request)
        return serve_in_session(self.sessions, request, lambda session: handlers.invoke(self.model, request, session))

    # ---- bidirectional streams (websocket.py serves them; these are the model's side) --------------
    @property
    def can_stream(self) -> bool:
        return self.state == READY and self.handlers is not None and self.handlers.stream_fn is not None

    def stream_messages(self, request: Request, messages: Iterator[Message]) -> Iterator[Message]:
        """The outgoing messages of one stream; `request` is its upgrade request (path, query, headers)."""
        assert self.handlers is not None
        context = Context(environ=request.environ, model_dir=self.config.model_dir)
        return self.handlers.stream(self.model, messages, context)

    def bidirectional_stream(self, request: Request) -> Answer:
        """The stream route as plain HTTP: what a request gets that the worker did not take as a
        WebSocket (websocket.StreamServer.claims)."""
        if self.state == LOADING:
            raise ModelNotReady("the model is still loading")
        if self.state == FAILED:
            raise ModelLoadFailed(self.failure)
        assert self.handlers is not None
        if self.handlers.stream_fn is None:
            return Answer.error(501, f"{request.path} serves bidirectional streams, and the handler module "
                                     f"defines no stream_fn(model, messages, context)")
        if (request.environ.get("HTTP_UPGRADE") or "").lower() != "websocket":
            return Answer.error(426, f"{request.path} is a WebSocket (RFC 6455): open it with "
                                     f"Upgrade: websocket", [("Upgrade", "websocket")])
        return Answer.error(501, "bidirectional streams are served by the sync workers behind nginx: not with "
                                 "SMSUPER_WORKER_THREADS > 1 or SMSUPER_BATCH_SIZE > 1, nor "
                                 "without nginx")

    def execution_parameters(self, request: Request) -> Answer:
        function = self.handlers.execution_parameters_fn if self.handlers else None
        if function is None:
            parameters = self.config.execution_parameters()
        else:
            parameters = dict(call(function, Context(environ=request.environ, model_dir=self.config.model_dir)))
        return Answer(json.dumps(parameters).encode("utf-8"), JSON)
