"""The Flask app of style A: /ping, /invocations, /execution-parameters.

It knows nothing of processes: it is handed a ModelService and answers from
it. Every error is a short JSON body, {"error": "..."}; 5xx errors also log
their traceback (4xx log one line). Behind nginx, /ping never gets here (nginx
answers it from the readiness flag); without nginx this /ping answers from
this worker's own state, and can queue behind predictions.
"""

from __future__ import annotations

import json
import traceback
from typing import Optional

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from ... import log
from ...metrics.worker.serving import record_phases
from .. import routes
from .context import Context
from .errors import ModelNotReady, ServeError, status_of
from .handlers import UserCodeError
from .service import ModelService


def json_error(status: int, message: str, headers: Optional[dict] = None) -> Response:
    body = json.dumps({"error": message}, ensure_ascii=False) + "\n"
    return Response(body, status=status, content_type="application/json", headers=headers)


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


def create_app(service: ModelService) -> Flask:
    app = Flask("smsuper.serve")
    # nginx enforces the limit first; this keeps it when gunicorn faces clients itself.
    app.config["MAX_CONTENT_LENGTH"] = service.config.max_payload_bytes

    @app.route("/ping", methods=routes.METHODS["/ping"], provide_automatic_options=False)
    def ping() -> Response:
        if service.ready:
            return Response(b"", status=200)
        if service.state == "failed":
            return json_error(503, service.failure)
        return json_error(503, "the model is still loading")

    @app.route("/invocations", methods=routes.METHODS["/invocations"], provide_automatic_options=False)
    def invocations() -> Response:
        environ = request.environ
        body = request.get_data(cache=False)
        context = Context(environ=environ)
        try:
            answer = service.invoke(body, environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT"), context)
        except ModelNotReady as error:
            return json_error(error.status, error.message, {"Retry-After": "1"})
        except Exception as error:
            return _error_response(error)
        record_phases(environ, context.phase_seconds)
        if isinstance(answer, tuple):
            payload, content_type = answer
            response = Response(payload, status=200, content_type=content_type)
        else:
            response = answer
        for name, value in context.response_headers.items():
            response.headers[name] = value
        return response

    @app.route("/execution-parameters", methods=routes.METHODS["/execution-parameters"],
               provide_automatic_options=False)
    def execution_parameters() -> Response:
        try:
            parameters = service.execution_parameters(Context(environ=request.environ))
        except Exception as error:
            return _error_response(error)
        return Response(json.dumps(parameters), status=200, content_type="application/json")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # 404 for unknown routes, 405 for a wrong method (OPTIONS too: it is no route of the
        # platform's, and Flask would answer it 200 in HTML): JSON like everything else.
        if error.code == 404:
            return json_error(404, routes.NO_SUCH_ROUTE)
        if error.code == 405 and request.path in routes.METHODS:
            allow = routes.allow(request.path)
            return json_error(405, f"method {request.method} is not allowed on {request.path}: use {allow}",
                              {"Allow": allow})
        return json_error(error.code or 500, error.description or error.name)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        return _error_response(error)

    return app
