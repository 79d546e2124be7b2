"""The Flask app of style A: one rule per row of the route table (serve/routes.py).

It knows nothing of processes: it is handed a ModelService and answers from
it. Each rule's view is the server side of the seam (seam.py): it makes a
Request, calls the service's entry the row names (`invoke` for /invocations)
and builds the response from the Answer it gets back. Every error is a short
JSON body, {"error": "..."}; 5xx errors also log their traceback (4xx log one
line). Behind nginx, /ping never gets here (nginx answers it from the
readiness flag); without nginx this /ping answers from this worker's own
state, and can queue behind predictions.
"""

from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Optional

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ... import log
from ...metrics.worker.serving import record_phases
from .. import routes
from .errors import ModelNotReady, ServeError, status_of
from .handlers import UserCodeError
from .seam import Answer, Headers, Request
from .service import ModelService
from .streaming import UNBUFFERED, Streamed


def respond(answer: Answer) -> Response:
    """The HTTP response of an Answer, and only of it."""
    if isinstance(answer.body, Streamed):  # chunked, and nginx passes it on unbuffered
        return Response(answer.body, status=answer.status, content_type=answer.content_type,
                        headers=[*answer.headers, UNBUFFERED])
    return Response(answer.body, status=answer.status, content_type=answer.content_type,
                    headers=list(answer.headers) if answer.headers else None)


def json_error(status: int, message: str, headers: Headers = ()) -> Response:
    return respond(Answer.error(status, message, headers))


def _report(status: int, message: str, error: BaseException) -> None:
    where = f"{request.method} {request.path}"
    if status >= 500:
        cause = error.error if isinstance(error, UserCodeError) else error
        trace = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
        if isinstance(error, ServeError) and not isinstance(error, UserCodeError):
            log.error(f"{where}: {status}: {message}")
        else:
            log.error(f"{where}: {status}: {message}\n{trace}")
    else:
        log.warning(f"{where}: {status}: {message}")


def _error_response(error: BaseException) -> Response:
    if isinstance(error, UserCodeError):
        status = error.status or 500
        message = str(error.error) if error.status else str(error)
    elif isinstance(error, ServeError):
        status, message = error.status, error.message
    else:
        status = status_of(error) or 500
        message = str(error) if status < 500 else f"internal error: {type(error).__name__}: {error}"
    _report(status, message, error)
    return json_error(status, message)


def _read_body() -> bytes:
    # Flask's reader: it keeps MAX_CONTENT_LENGTH (a 413, raised as an HTTPException).
    return request.get_data(cache=False)


def _view(entry: Callable[[Request], Answer], stream_timeout: float) -> Callable[..., Response]:
    """A route's view: the Request to the entry, the Answer to the client (streamed when its
    body is an iterator: streaming.py)."""

    def view(**params: str) -> Response:
        environ = request.environ
        began = time.perf_counter()
        try:
            answer = entry(Request(environ, _read_body, params))
        except HTTPException:
            raise  # Flask's own (the body limit): answered by http_error below
        except ModelNotReady as error:
            return json_error(error.status, error.message, [("Retry-After", "1")])
        except Exception as error:
            return _error_response(error)
        if answer.phases:
            record_phases(environ, answer.phases)
        if not isinstance(answer.body, (bytes, bytearray)):
            answer.body = Streamed(answer.body, environ, began, stream_timeout, f"{request.method} {request.path}")
        return respond(answer)

    return view


def create_app(service: ModelService, table: Optional[Any] = None) -> Flask:
    """`table`: the route table (routes.TABLE unless given)."""
    table = routes.TABLE if table is None else table
    app = Flask("smsuper.serve")
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
    not_found = routes.no_such_route(table)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # 404 for unknown routes, 405 for a wrong method (OPTIONS too: it is no route of the
        # platform's, and Flask would answer it 200 in HTML): JSON like everything else.
        if error.code == 404:
            return json_error(404, not_found)
        route = routes.find(request.path, table) if error.code == 405 else None
        if route is not None:
            allow = route.allow()
            return json_error(405, routes.not_allowed(request.method, request.path, allow), [("Allow", allow)])
        return json_error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        return _error_response(error)

    return app
