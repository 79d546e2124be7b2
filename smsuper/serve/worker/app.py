"""The Flask app of style A: one rule per row of the route table (serve/routes.py).

It knows nothing of processes: it is handed a ModelService and answers from
it. Each rule's view is the server side of the seam (seam.py): it makes a
Request, calls the service's entry the row names (`invoke` for /invocations)
and builds the response from the Answer it gets back. Every error is a short
JSON body, {"error": "..."}; 5xx errors also log their traceback (4xx log one
line). Behind nginx, /ping never gets here (nginx answers it from the
readiness flag); without nginx this /ping answers from this worker's own
state, and can queue behind predictions.

The shortcut. Flask's dispatch (a request context pushed and popped, URL
matching, a werkzeug Request and Response, signals) cost more than the whole
prediction of a small model: about 60% of the app's time per /invocations
(docs/architecture.md, "The worker's request path"). ServingApp answers a
request on one of the table's fixed paths (no <name> segment, no WebSocket)
with an allowed method other than HEAD, and an ordinary body (a
Content-Length within the limit, or none and no Transfer-Encoding) straight
from the route's entry, reads the body as werkzeug would, and builds its
response the way werkzeug would. Every
other request (other paths, wrong methods, HEAD, a body over the limit or
chunked) takes Flask's full dispatch, and so does every request once anything
is registered that needs it: a hook on the app, a receiver of Flask's request
signals, or a handler module that refers to Flask or werkzeug (it may use
flask.request, jsonify or current_app, which need Flask's contexts). A helper
module of the user's that uses them unseen fails its first request with a 500
that names the fix; that model's later requests take Flask's dispatch.
tests/test_fast_path.py checks that both ways answer byte for byte alike.
"""

from __future__ import annotations

import time
import traceback
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from flask import Flask, Response, request, signals
from werkzeug.exceptions import ClientDisconnected, HTTPException

from ... import log
from ...metrics.worker.serving import record_phases
from .. import routes
from .errors import ModelNotReady, ServeError, status_of
from .handlers import UserCodeError
from .seam import Answer, Request
from .service import ModelService
from .streaming import UNBUFFERED, Streamed


def respond(answer: Answer) -> Response:
    """The HTTP response of an Answer, and only of it."""
    if isinstance(answer.body, Streamed):  # chunked, and nginx passes it on unbuffered
        return Response(answer.body, status=answer.status, content_type=answer.content_type,
                        headers=[*answer.headers, UNBUFFERED])
    return Response(answer.body, status=answer.status, content_type=answer.content_type,
                    headers=list(answer.headers) if answer.headers else None)


def _report(where: str, status: int, message: str, error: BaseException) -> None:
    if status >= 500:
        cause = error.error if isinstance(error, UserCodeError) else error
        trace = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
        if isinstance(error, ServeError) and not isinstance(error, UserCodeError):
            log.error(f"{where}: {status}: {message}")
        else:
            log.error(f"{where}: {status}: {message}\n{trace}")
    else:
        log.warning(f"{where}: {status}: {message}")


def _error_answer(error: BaseException, where: str) -> Answer:
    if isinstance(error, UserCodeError):
        status = error.status or 500
        message = str(error.error) if error.status else str(error)
    elif isinstance(error, ServeError):
        status, message = error.status, error.message
    else:
        status = status_of(error) or 500
        message = str(error) if status < 500 else f"internal error: {type(error).__name__}: {error}"
    _report(where, status, message, error)
    return Answer.error(status, message)


def _http_error_answer(error: HTTPException, method: str, path: str, table: Tuple[routes.Route, ...],
                       not_found: str) -> Answer:
    # 404 for unknown routes, 405 for a wrong method (OPTIONS too: it is no route of the
    # platform's, and Flask would answer it 200 in HTML): JSON like everything else.
    if error.code == 404:
        return Answer.error(404, not_found)
    route = routes.find(path, table) if error.code == 405 else None
    if route is not None:
        allow = route.allow()
        return Answer.error(405, routes.not_allowed(method, path, allow), [("Allow", allow)])
    return Answer.error(error.code or 500, error.description or error.name)


def _read_body() -> bytes:
    # Flask's reader: it keeps MAX_CONTENT_LENGTH (a 413, raised as an HTTPException).
    return request.get_data(cache=False)


def _read_body_of(environ: Dict[str, Any], length: int) -> bytes:
    """The body as werkzeug's reader gives it (get_input_stream, LimitedStream): all of it when
    the server ends the input itself (gunicorn: wsgi.input_terminated), else `length` bytes; a
    client gone before its body's end is werkzeug's ClientDisconnected (a 400)."""
    stream = environ["wsgi.input"]
    try:
        if "wsgi.input_terminated" in environ:
            return stream.read()
        parts = []
        missing = length
        while missing > 0:
            data = stream.read(min(missing, 65536))
            if not data:
                raise ClientDisconnected()
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)
    except (OSError, ValueError):
        raise ClientDisconnected() from None


def _serve(entry: Callable[[Request], Answer], environ: Dict[str, Any], read_body: Callable[[], bytes],
           params: Dict[str, str], where: str, stream_timeout: float) -> Answer:
    """The Request to the entry, its Answer back (a body that is an iterator streamed: streaming.py).
    Raises only HTTPException (the body limit, or user code's werkzeug errors)."""
    began = time.perf_counter()
    try:
        answer = entry(Request(environ, read_body, params))
    except HTTPException:
        raise
    except ModelNotReady as error:
        return Answer.error(error.status, error.message, [("Retry-After", "1")])
    except Exception as error:
        return _error_answer(error, where)
    if answer.phases:
        record_phases(environ, answer.phases)
    if not isinstance(answer.body, (bytes, bytearray)):
        answer.body = Streamed(answer.body, environ, began, stream_timeout, where)
    return answer


def _view(entry: Callable[[Request], Answer], stream_timeout: float) -> Callable[..., Response]:
    """A route's view in Flask's dispatch: the Request to the entry, the Answer to the client."""

    def view(**params: str) -> Response:
        where = f"{request.method} {request.path}"
        # An HTTPException (the body limit) goes on to Flask: answered by http_error below.
        return respond(_serve(entry, request.environ, _read_body, params, where, stream_timeout))

    return view


# What werkzeug's Response writes when an Answer names no type, and its status lines ("404 NOT
# FOUND"), taken from werkzeug itself so that the shortcut's answers are its answers.
_DEFAULT_TYPE = Response().headers["Content-Type"]
_status_lines: Dict[int, str] = {}
# Headers werkzeug rewrites or moves (get_wsgi_headers), or that Response() sets itself: an
# Answer carrying one is sent through a werkzeug Response.
_RESPONSE_OWN = frozenset(("content-type", "content-length", "location", "content-location"))
# Flask's signals sent while it dispatches a request: a receiver needs the full dispatch.
_REQUEST_SIGNALS = (signals.request_started, signals.request_finished, signals.request_tearing_down,
                    signals.got_request_exception, signals.appcontext_pushed, signals.appcontext_popped,
                    signals.appcontext_tearing_down)


def _status_line(status: int) -> str:
    line = _status_lines.get(status)
    if line is None:
        line = _status_lines[status] = Response(status=status).status
    return line


def _plain(answer: Answer, method: str) -> bool:
    """Whether werkzeug would send `answer` as it is: a bytes body, a status that keeps its
    Content-Length, headers of plain text it leaves alone."""
    if not isinstance(answer.body, (bytes, bytearray)) or method == "HEAD":
        return False
    status = answer.status
    if not (200 <= status < 600) or status == 204 or status == 304:
        return False
    content_type = answer.content_type
    if content_type is not None and (type(content_type) is not str or "\n" in content_type or "\r" in content_type):
        return False
    for name, value in answer.headers:
        if type(value) is not str or "\n" in value or "\r" in value or name.lower() in _RESPONSE_OWN:
            return False
    return True


def refers_to_flask(module: Optional[ModuleType]) -> bool:
    """Whether a handler module holds Flask or werkzeug (the module, or anything from them): it
    may use flask.request, jsonify or current_app, which only Flask's dispatch provides."""
    if module is None:
        return False
    for value in list(vars(module).values()):
        try:
            if isinstance(value, ModuleType):
                name = value.__name__
            elif isinstance(value, (type, FunctionType, BuiltinFunctionType)):
                name = value.__module__
            else:
                name = type(value).__module__  # an object: flask.request is a werkzeug LocalProxy
        except Exception:
            return True  # a proxy that cannot be asked outside a request: Flask's, surely
        if isinstance(name, str) and (name.split(".", 1)[0] in ("flask", "werkzeug")):
            return True
    return False


def _wanted_flask(error: BaseException) -> bool:
    """Whether user code raised for want of Flask's request or application context."""
    return type(error) is RuntimeError and str(error).startswith("Working outside of ")


Shortcut = Tuple[Callable[[Request], Answer], Tuple[str, ...]]


class ServingApp(Flask):
    """Flask, with the shortcut (see the module's doc) in front of its dispatch."""

    def __init__(self, name: str, service: Any, max_body: int, stream_timeout: float,
                 shortcuts: Dict[str, Shortcut], table: Tuple[routes.Route, ...], not_found: str):
        super().__init__(name)
        self.service = service
        self._scanned: Any = self  # the handler module last looked at (refers_to_flask), none yet
        self._module_uses_flask = False
        self.max_body = max_body
        self.stream_timeout = stream_timeout
        self.shortcuts = shortcuts  # path -> (entry, methods); empty: Flask's dispatch always
        self.table = table
        self.not_found = not_found

    def needs_dispatch(self) -> bool:
        """Something registered that only Flask's full dispatch runs, or a handler module that
        refers to Flask (looked at once per module: a model loaded later is looked at then)."""
        module = getattr(getattr(self.service, "handlers", None), "module", None)
        if module is not self._scanned:
            self._module_uses_flask = refers_to_flask(module)
            self._scanned = module
        if self._module_uses_flask or self.before_request_funcs or self.after_request_funcs or self.teardown_request_funcs \
                or self.teardown_appcontext_funcs or self.url_value_preprocessors or self.url_default_functions \
                or self.blueprints:
            return True
        for signal in _REQUEST_SIGNALS:
            if signal.receivers:
                return True
        return False

    def noting_flask(self, entry: Callable[[Request], Answer]) -> Callable[[Request], Answer]:
        """`entry`, for the shortcut. Flask's contexts used from a module the scan could not see
        (a helper the handler module imports) raise "Working outside of ... context": that request
        is a 500 that says what to do, and the model's later requests take Flask's dispatch."""

        def run(req: Request) -> Answer:
            try:
                return entry(req)
            except UserCodeError as error:
                if not _wanted_flask(error.error):
                    raise
                self._module_uses_flask = True
                module = getattr(getattr(self.service, "handlers", None), "module", None)
                where = getattr(module, "__file__", None) or "the handler module"
                hint = (f"{error.error} (smsuper answered this request without Flask's dispatch because {where} "
                        "does not import flask; its next requests get Flask's contexts. Add `import flask` "
                        f"to {where.rsplit('/', 1)[-1]} to have every request get them.)")
                raise UserCodeError(error.function, RuntimeError(hint)) from error.error

        return run

    def wsgi_app(self, environ: Dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        shortcut = self.shortcuts.get(path) if self.shortcuts else None
        if shortcut is None:
            return super().wsgi_app(environ, start_response)
        entry, methods = shortcut
        method = environ.get("REQUEST_METHOD")
        length = environ.get("CONTENT_LENGTH")
        # An ordinary body: a Content-Length within the limit, or none. Anything else (chunked,
        # over the limit, an unreadable length) is Flask's to answer.
        if method not in methods or "HTTP_TRANSFER_ENCODING" in environ \
                or (length and not (length.isascii() and length.isdigit() and int(length) <= self.max_body)) \
                or self.needs_dispatch():
            return super().wsgi_app(environ, start_response)
        where = f"{method} {path}"
        try:
            answer = _serve(entry, environ, lambda: _read_body_of(environ, int(length) if length else 0), {},
                            where, self.stream_timeout)
        except HTTPException as error:
            answer = _http_error_answer(error, method, path, self.table, self.not_found)
        if _plain(answer, method):
            body = answer.body
            headers = list(answer.headers)
            headers.append(("Content-Type", answer.content_type or _DEFAULT_TYPE))
            headers.append(("Content-Length", str(len(body))))
            start_response(_status_line(answer.status), headers)
            return [body]
        try:
            response = respond(answer)
        except Exception as error:  # a header werkzeug refuses (a newline in its value)
            response = respond(_error_answer(error, where))
        return response(environ, start_response)


def create_app(service: ModelService) -> Flask:
    """The app: a rule per row of routes.TABLE, answered by the service's entry of the row's name."""
    table = routes.TABLE
    not_found = routes.no_such_route(table)
    shortcuts: Dict[str, Shortcut] = {}
    app = ServingApp("smsuper.serve", service, service.config.max_payload_bytes, service.config.stream_timeout,
                     shortcuts, table, not_found)
    # nginx enforces the limit first; this keeps it when gunicorn faces clients itself.
    app.config["MAX_CONTENT_LENGTH"] = service.config.max_payload_bytes
    for route in table:
        entry = getattr(service, route.entry, None)
        if entry is None:
            raise TypeError(f"route {route.path} names the entry {route.entry}, which "
                            f"{type(service).__name__} does not have")
        view = _view(entry, service.config.stream_timeout)
        app.add_url_rule(route.path, endpoint=route.path, view_func=view, methods=route.methods,
                         provide_automatic_options=False)
        if route.body == routes.UPGRADED:
            # Werkzeug answers a request with `Upgrade: websocket` 400 unless a websocket rule
            # matches it: the same view for both (a stream the worker did not take, websocket.py).
            app.add_url_rule(route.path, endpoint=route.path + " websocket", view_func=view, methods=route.methods,
                             provide_automatic_options=False, websocket=True)
        elif route.pattern is None:
            shortcuts[route.path] = (app.noting_flask(entry), tuple(method for method in route.methods if method != "HEAD"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return respond(_http_error_answer(error, request.method, request.path, table, not_found))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        return respond(_error_answer(error, f"{request.method} {request.path}"))

    return app
