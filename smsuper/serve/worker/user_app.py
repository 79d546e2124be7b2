"""Style B: the user's own WSGI app (SMSUPER_APP=module:attr), like the seed's predictor.py.

The module is imported from the working directory, the code directories, or
anything already on sys.path; `attr` may be `create_app()` to call a factory.
Ready means: the import worked and the app's own /ping answered 2xx once (a
404 or 405 counts as "no health route": the import is all there is to wait
for). That first call happens while the worker boots, so an app that loads
its model lazily on the first /ping (as the seed's ScoringService does) has
it loaded before the worker takes traffic. Until it passes, it is retried
every second; afterwards nginx answers /ping from the readiness flag, so the
app's /ping never again competes with predictions.

Which routes are the app's alone, and which smsuper answers when the app
cannot (answers 404: /execution-parameters), the route table says (each
row's `user_app`, serve/routes.py); smsuper's answer is this service's entry of
the row's name, as for style A (seam.py).

An answer of the app's without a Content-Length (a generator, Flask's
stream_with_context) is a stream: nginx passes it on unbuffered and the
worker keeps beating while its chunks flow (streaming.py).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Iterable, List, Optional, Tuple

from werkzeug.test import EnvironBuilder, run_wsgi_app

from ... import log
from .. import readiness, routes
from ..config import ServeConfig
from ..program import code_directories
from ..runtime import RuntimeDir
from .seam import JSON, Answer, Request, send
from .service import FAILED, LOADING, READY, LoadState
from .streaming import UNBUFFERED, Streamed

PROBE_INTERVAL = 1.0


def import_app(spec: str, search: List[str]) -> Any:
    module_name, _, attribute = spec.partition(":")
    attribute = attribute or "app"
    for directory in reversed(search):
        if directory and os.path.isdir(directory) and directory not in sys.path:
            sys.path.insert(0, directory)
    module = importlib.import_module(module_name)
    call = attribute.endswith("()")
    target: Any = module
    for part in attribute.rstrip("()").split("."):
        target = getattr(target, part)
    if call:
        target = target()
    if not callable(target):
        raise TypeError(f"{spec} is a {type(target).__name__}, not a WSGI application")
    return target


def probe_ping(app: Any) -> Tuple[bool, str]:
    """Call the app's GET /ping in-process: (ready, what it said)."""
    environ = EnvironBuilder(path="/ping", method="GET").get_environ()
    app_iter, status, _ = run_wsgi_app(app, environ)
    try:
        for _ in app_iter:
            pass
    finally:
        close = getattr(app_iter, "close", None)
        if close:
            close()
    code = int(status.split()[0])
    if 200 <= code < 300 or code in (404, 405):
        return True, status
    return False, f"the app's /ping answered {status}"


class UserAppService(LoadState):
    """Load state and WSGI entry point for a user's app; same face as ModelService."""

    def __init__(self, config: ServeConfig, runtime: Optional[RuntimeDir] = None,
                 should_stop: Callable[[], bool] = lambda: False):
        super().__init__(config, runtime)
        self.should_stop = should_stop
        self.app: Any = None
        # The rows smsuper answers when the app answers 404, and the health route(s).
        self.fallbacks = tuple(route for route in routes.TABLE if route.user_app == routes.FALLBACK)
        self.health = {route.path for route in routes.TABLE if route.entry == routes.HEALTH}
        for route in self.fallbacks:
            if not callable(getattr(self, route.entry, None)):
                raise TypeError(f"route {route.path} names the entry {route.entry}, which "
                                f"{type(self).__name__} does not have")

    def _log_once(self, message: str) -> None:
        if self.runtime is None or readiness.first_to_report(self.runtime, message):
            log.error(message)

    def load(self) -> None:
        spec = self.config.app or ""
        self._status(LOADING, f"importing {spec}")
        search = [os.getcwd()] + code_directories(self.config.base_dir, self.config.submit_directory)
        try:
            self.app = import_app(spec, search)
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                raise
            self.failure = f"cannot load SMSUPER_APP={spec}: {type(error).__name__}: {error}"
            self.state = FAILED
            self._status(FAILED, self.failure)
            self._log_once(f"{self.failure}\n{traceback.format_exc().rstrip()}")
            return
        self._wait_for_health(spec)

    def _wait_for_health(self, spec: str) -> None:
        while not self.should_stop():
            try:
                ok, said = probe_ping(self.app)
            except Exception as error:
                ok, said = False, f"the app's /ping raised {type(error).__name__}: {error}"
                self._log_once(f"{said}\n{traceback.format_exc().rstrip()}")
            if ok:
                self.state = READY
                log.info(f"{spec} is ready")
                return
            self._status(LOADING, f"waiting for {spec}: {said}")
            self._log_once(f"{spec} is not ready yet: {said}; asking again every {PROBE_INTERVAL:g} s")
            time.sleep(PROBE_INTERVAL)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.state != READY:
            if self.state == FAILED:
                answer = Answer.error(503 if path in self.health else 500, self.failure)
            else:
                answer = Answer.error(503, "the app is still loading")
            return send(answer, start_response)
        fallback = routes.find(path, self.fallbacks) if self.fallbacks else None
        if fallback is not None:
            return self._unless_not_found(fallback, environ, start_response)
        return self._streamed_unless_sized(environ, start_response)

    def _streamed_unless_sized(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The app's answer; one without a Content-Length goes out as a stream."""
        began = time.perf_counter()
        unsized = []

        def start(status: str, headers: List[Tuple[str, str]], *exc_info: Any) -> Callable:
            # 204, 304 and HEAD answers have no body to stream.
            if not any(name.lower() == "content-length" for name, _ in headers) \
                    and status[:3] not in ("204", "304") and environ.get("REQUEST_METHOD") != "HEAD":
                headers = [*headers, UNBUFFERED]
                unsized.append(True)
            return start_response(status, headers, *exc_info)

        body = self.app(environ, start)
        if not unsized:  # sized, or an app that starts its response only when iterated
            return body
        where = f"{environ.get('REQUEST_METHOD', '')} {environ.get('PATH_INFO', '')}"
        return Streamed(body, environ, began, self.config.stream_timeout, where)

    def _unless_not_found(self, route: routes.Route, environ: dict, start_response: Callable) -> Iterable[bytes]:
        """The app's answer, unless it is a 404: then the answer of smsuper's entry for the route."""
        app_iter, status, headers = run_wsgi_app(self.app, environ)
        if not status.startswith("404"):
            start_response(status, headers)
            return app_iter
        close = getattr(app_iter, "close", None)
        if close:
            close()
        match = route.pattern.match(environ.get("PATH_INFO", "")) if route.pattern is not None else None
        entry: Callable[[Request], Answer] = getattr(self, route.entry)
        return send(entry(Request(environ, params=match.groupdict() if match else None)), start_response)

    # ---- entries (seam.py) ------------------------------------------------------------
    def execution_parameters(self, request: Request) -> Answer:
        return Answer(json.dumps(self.config.execution_parameters()).encode("utf-8"), JSON)
