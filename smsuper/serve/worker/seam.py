"""The seam between the HTTP server and the inference code: `entry(request) -> Answer`.

Two sides meet here, in a worker:

  the server     app.py (the Flask app of style A), user_app.py (the wrapper around
                 a style B WSGI app), the request metrics (metrics/worker/serving.py).
                 It knows HTTP and the route table; it knows nothing of models.
  the inference  service.py (this process's model and its load state), handlers.py
                 (the user's functions), codecs.py. It knows the model; it knows
                 nothing of Flask, WSGI or nginx.

Every row of the route table (serve/routes.py) names an entry: a method of the
worker's service (`ping`, `invoke`, `execution_parameters`) that takes a Request
and returns an Answer, or raises. A raised error becomes a JSON error answer on
the server side (an exception's status: errors.py); user code's errors arrive
wrapped in handlers.UserCodeError, which names the function.

  Request  method, path, params (the row's <name> segments), the headers (read
           from the WSGI environ when asked), content_type and accept (the raw
           headers), body (the bytes, read on first use).
  Answer   status, body (bytes, or an iterator of bytes, sent as it comes),
           content_type, headers (more (name, value) pairs: what the handler set
           on its `context`, a user Response's own), phases ((name, seconds) of
           the work, for the phase histogram).

The server builds the HTTP response from the Answer and from nothing else: the
user's `context` (context.py) is the handlers' API and goes no further than the
inference side. The request metrics stop timing when the server has sent the
body (the WSGI iterable's close()), so the time an iterator takes counts.

What builds on this next: several models (a row per model route, its
request.params["name"] picking the model), streaming (an Answer whose body is an
iterator, on a row nginx passes on unbuffered: routes.STREAMED), batching (an
invoke that queues requests and answers each from one call of the model).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

from ..routes import error_body

JSON = "application/json"
Body = Union[bytes, Iterable[bytes]]
Headers = Sequence[Tuple[str, str]]
Phases = Tuple[Tuple[str, float], ...]


class Request:
    """One HTTP request, as the inference code sees it."""

    __slots__ = ("environ", "params", "_read_body", "_body")

    def __init__(self, environ: Dict[str, Any], read_body: Optional[Callable[[], bytes]] = None,
                 params: Optional[Dict[str, str]] = None):
        self.environ = environ
        self.params = params or {}
        # The server's own reader (Flask's enforces the body limit); else the WSGI input.
        self._read_body = read_body
        self._body: Optional[bytes] = None

    @property
    def method(self) -> str:
        return self.environ.get("REQUEST_METHOD", "GET")

    @property
    def path(self) -> str:
        return self.environ.get("PATH_INFO", "")

    @property
    def content_type(self) -> Optional[str]:
        """The Content-Type header as sent (with its parameters), or None."""
        return self.environ.get("CONTENT_TYPE")

    @property
    def accept(self) -> Optional[str]:
        """The Accept header as sent, or None."""
        return self.environ.get("HTTP_ACCEPT")

    @property
    def body(self) -> bytes:
        if self._body is None:
            self._body = self._read_body() if self._read_body is not None else _read_input(self.environ)
        return self._body


def _read_input(environ: Dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    return stream.read(length) if stream is not None and length > 0 else b""


class Answer:
    """What an entry answers: the server sends exactly this."""

    __slots__ = ("body", "content_type", "status", "headers", "phases")

    def __init__(self, body: Body, content_type: Optional[str] = None, status: int = 200,
                 headers: Headers = (), phases: Phases = ()):
        self.body = body
        self.content_type = content_type  # None: the server's default
        self.status = status
        self.headers = headers
        self.phases = phases

    @classmethod
    def error(cls, status: int, message: str, headers: Headers = ()) -> "Answer":
        """The one shape of every error: {"error": "what was wrong"} (routes.error_body, nginx's too)."""
        return cls(error_body(message), JSON, status, headers)


def send(answer: Answer, start_response: Callable) -> Iterable[bytes]:
    """The Answer as a plain WSGI response (for the wrapper around a user's WSGI app)."""
    headers = [("Content-Type", answer.content_type or JSON)]
    body: Iterable[bytes]
    if isinstance(answer.body, (bytes, bytearray)):
        headers.append(("Content-Length", str(len(answer.body))))
        body = [bytes(answer.body)]
    else:
        body = answer.body
    headers.extend(answer.headers)
    start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
    return body
