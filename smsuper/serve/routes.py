"""The routes smsuper serves: one table, read by every part that needs to know them.

  nginx's config (nginx.py)     a location per row: answered by nginx itself or passed
                                to the workers, the row's methods checked (405 with Allow),
                                its answer buffered, streamed or upgraded to a
                                WebSocket; the access log's label
  the Flask app (worker/app.py) a rule per row, answered by the worker entry the row names
  the user's WSGI app           which rows smsuper answers when the app cannot
    (worker/user_app.py)
  the metrics                   the `route` label: PID 1's counts from nginx's access log
    (metrics/responses.py,      and the workers' own figures (every other path is `other`,
     metrics/worker/serving.py) so the label values stay bounded)
  the 404 and 405 texts         nginx's and the Flask app's, the same words

Adding a route is one row here, plus the worker entry it names (a method of the
worker's service: worker/service.py and worker/user_app.py; see worker/seam.py).
This module is read by PID 1 too: it imports nothing but re, json and the settings, which PID 1
has anyway.

A path may hold `<name>` segments (`/models/<name>/invoke`): one segment of any
characters but `/`, handed to the entry as request.params["name"]; the row's label
is the pattern itself.
"""

from __future__ import annotations

import json
import re

from .. import settings

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, Optional, Pattern, Tuple

# Who answers a route when nginx is in front (without nginx, the workers answer every route).
NGINX = "nginx"    # nginx itself, from the readiness flag: never queued behind predictions
WORKER = "worker"  # nginx passes it to a worker
# Who answers a route of a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true, serve/multimodel/).
MANAGER = "manager"  # PID 1's model table, over its unix socket (serve/multimodel/api.py)
MODEL = "model"      # the workers of the model the path's <name> names, over that model's socket
REFUSED = "refused"  # nginx answers 400 itself, saying which route to use instead
ANSWERED_BY = (NGINX, WORKER, MANAGER, MODEL, REFUSED)
# How nginx passes a worker's answer on.
BUFFERED = "buffered"  # whole, so the sync worker is free again however slowly the client reads
STREAMED = "streamed"  # as the worker writes it (chunked answers, server-sent events)
UPGRADED = "upgraded"  # a WebSocket: nginx passes the Upgrade on, then bytes both ways (worker/websocket.py)
# What a user's own WSGI app (SMSUPER_APP) gets.
APP = "app"            # the app answers; smsuper does not look
FALLBACK = "fallback"  # the app answers, unless it answers 404: then smsuper's entry does

# The entry of the health check (/ping): its access-log lines are left out unless
# SMSUPER_LOG_PING, and a style B app that is not ready answers it 503 (other routes 500).
HEALTH = "ping"

# A <name> segment of a path.
SEGMENT = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
# What nginx's config can hold unquoted, and its access log without a space.
_PATH = re.compile(r"(/([A-Za-z0-9._~-]+|<[A-Za-z_][A-Za-z0-9_]*>)?)+$")


class Route:
    """One row. `entry`: the name of the worker service's method that answers it."""

    __slots__ = ("path", "methods", "entry", "answered_by", "body", "user_app", "label", "pattern")

    def __init__(self, path: str, methods: Tuple[str, ...], entry: str, answered_by: str = WORKER,
                 body: str = BUFFERED, user_app: str = APP, label: Optional[str] = None):
        if answered_by not in ANSWERED_BY or body not in (BUFFERED, STREAMED, UPGRADED) or \
                user_app not in (APP, FALLBACK):
            raise ValueError(f"route {path}: answered_by, body or user_app is not one of the known values")
        if not _PATH.match(path) or not methods or not all(m.isalpha() and m.isupper() for m in methods):
            raise ValueError(f"route {path}: a path is / and letters, digits, ._~- or <name> segments; "
                             f"the methods are upper-case words")
        self.path = path
        self.methods = tuple(methods)
        self.entry = entry
        self.answered_by = answered_by
        self.body = body
        self.user_app = user_app
        # A label goes before the status in nginx's access-log lines: no spaces.
        self.label = label or path
        # None for an exact path; else the regular expression of its <name> segments.
        self.pattern: Optional[Pattern[str]] = None
        if SEGMENT.search(path):
            self.pattern = re.compile(self.regex() + "$")

    def regex(self) -> str:
        """The path as a regular expression (without anchors), each <name> one segment."""
        parts = SEGMENT.split(self.path)
        return "".join(re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
                       for index, part in enumerate(parts))

    def allow(self) -> str:
        """The Allow header of a 405 on this route."""
        return ", ".join(self.methods)

    def __repr__(self) -> str:
        return f"Route({self.path!r}, {self.methods!r}, {self.entry!r}, {self.answered_by}, {self.body})"


def _stream_path() -> str:
    """SMSUPER_BIDIRECTIONAL_STREAM_PATH; a bad value is the start's error (settings.validate), not this one's."""
    try:
        return settings.value("SMSUPER_BIDIRECTIONAL_STREAM_PATH")
    except settings.SettingError:
        return "/invocations-bidirectional-stream"


# The platform's routes. The methods are nginx's to check (405 with Allow), so a
# worker only sees what it is meant to answer.
TABLE: Tuple[Route, ...] = (
    Route("/ping", ("GET", "HEAD"), HEALTH, answered_by=NGINX),
    Route("/invocations", ("POST",), "invoke"),
    Route("/execution-parameters", ("GET", "HEAD"), "execution_parameters", user_app=FALLBACK),
    Route(_stream_path(), ("GET",), "bidirectional_stream", body=UPGRADED),
)
# A multi-model endpoint's instead: models are loaded, listed and unloaded through PID 1,
# invoked by name (serve/multimodel/nginx_routes.py renders the rows nginx does not pass on).
MULTI_MODEL_TABLE: Tuple[Route, ...] = (
    Route("/ping", ("GET", "HEAD"), HEALTH, answered_by=NGINX),
    Route("/models", ("GET", "POST"), "models", answered_by=MANAGER),
    Route("/models/<name>", ("GET", "DELETE"), "model", answered_by=MANAGER),
    Route("/models/<name>/invoke", ("POST",), "invoke", answered_by=MODEL),
    Route("/invocations", ("POST",), "invoke", answered_by=REFUSED),
)


def table(multi_model: bool = False) -> Tuple[Route, ...]:
    """The routes of this endpoint."""
    return MULTI_MODEL_TABLE if multi_model else TABLE


# The `route` label of every other path (bounded label values).
OTHER = "other"


def find(path: str, table: Optional[Tuple[Route, ...]] = None) -> Optional[Route]:
    """The row whose path (or pattern) `path` is, or None."""
    for route in table if table is not None else TABLE:
        if route.path == path if route.pattern is None else route.pattern.match(path):
            return route
    return None


def labels(table: Optional[Tuple[Route, ...]] = None) -> Dict[str, str]:
    """The exact paths and their labels: what a lookup per request can use before find()."""
    return {route.path: route.label for route in (table if table is not None else TABLE) if route.pattern is None}


def no_such_route(table: Optional[Tuple[Route, ...]] = None) -> str:
    """The 404 text, nginx's and the workers'."""
    paths = [route.path for route in (table if table is not None else TABLE) if route.answered_by != REFUSED]
    listed = paths[0] if len(paths) == 1 else ", ".join(paths[:-1]) + " or " + paths[-1]
    return f"no such route: use {listed}"


def not_allowed(method: str, route: str, allow: str) -> str:
    """The 405 text. nginx passes its variables ($request_method ...) to fill it in its config."""
    return f"method {method} is not allowed on {route}: use {allow}"


def error_body(message: str) -> bytes:
    """The body of every error answer smsuper makes, nginx's and the workers': {"error": "..."}."""
    return (json.dumps({"error": message}, ensure_ascii=False) + "\n").encode("utf-8")
