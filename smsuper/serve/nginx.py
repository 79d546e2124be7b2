"""nginx in front of gunicorn: find the binary, render its configuration, build its argv.

Everything nginx writes lives in the runtime directory (pid file, temp paths,
access-log FIFO) and its error log goes to stderr, so it runs unchanged as an
unprivileged user. The locations come from the route table (routes.py):

  a row nginx answers    (/ping) from the readiness flag (see readiness.py): 200
                         with an empty body, or 503 with the JSON of
                         ping-status.json. Never queued behind predictions.
  a row a worker answers (/invocations, /execution-parameters) proxied to
                         gunicorn over its unix socket, its answer buffered or
                         (a streamed row) passed on as it comes
  an upgraded row        (/invocations-bidirectional-stream) the same, with the
                         client's Upgrade passed on: a WebSocket, whose bytes
                         nginx then relays both ways, idle for up to STREAM_IDLE_TIMEOUT
  anything else          404 with a short JSON body

Every error nginx makes itself is a short JSON body too, never its HTML page
(NGINX_ERRORS: 400 malformed, 404, 405 wrong method with its Allow header,
413 body too large, 414, 431 headers too large, 501, 502 worker died, 504 too
slow, 505, ...); the app's own 4xx/5xx pass untouched. A request is sent again
to another worker only when a worker's guard took its connection back, unread,
because the worker does not run (worker/rescue.py). nginx refuses a wrong
method on the platform's routes itself (each row's methods), so what it passes on
is always a request a worker is meant to answer; gunicorn's own limits sit
above nginx's (master/gunicorn_app.py), so its HTML error pages are out of reach.

The access log carries, before each line, the route label and the status
PID 1 counts for smsuper_http_requests_total (access_log.py): what nginx
answered, whoever made the answer.

Body size: client_max_body_size is exactly SAGEMAKER_MAX_PAYLOAD_IN_MB MiB;
nginx refuses a body only when it is larger than that (a Content-Length equal
to the limit passes), so 6,291,456 bytes pass and one byte more is 413. The
body buffer is as large as the limit (capped at 16 MiB): nginx allocates only
the Content-Length it is told, and a 6 MiB body stays in memory instead of
being spooled to a temp file (chunked bodies get the whole buffer at once). Response buffers follow the same bound, so a
sync worker hands its whole answer to nginx at once and is free again even
when the client reads slowly.
"""

from __future__ import annotations

import re
import resource

from ..init import capture
from . import routes
from . import timeouts
from .config import ServeConfig
from .runtime import NGINX_TEMP_KINDS, RuntimeDir

MEMORY_BUFFER_CAP = 16 * 1024 * 1024  # beyond this, large batch-transform bodies spool to disk
PROXY_BUFFER = 64 * 1024
UPSTREAM = "smsuper_model"
# The gunicorn socket is listed this many times: nginx tries each entry at most once, and a
# request a guard took back from a worker that does not run (worker/rescue.py) needs a second try,
# a third if that one lands on another taken-back connection too.
UPSTREAM_TRIES = 3
# How long a bidirectional stream (an upgraded row) may pass no byte either way before nginx
# closes it: the platform pings every 60 s, so a live stream never gets near it.
STREAM_IDLE_TIMEOUT = 3600
# nginx's buffer for the request line and for each header line, which it must hold whole with
# its line end (so a line holds 8188 bytes): gunicorn reads request lines of at most 8190
# bytes, its hard maximum, so nginx's limit is the one a client meets.
HEADER_BUFFER = 8190
HEADER_BUFFERS = 4
# Errors nginx answers itself: (status it makes, status the client gets, what to tell the client).
# 494 is nginx's own code for "request header too large" (it would answer 400); 431 says it.
NGINX_ERRORS = (
    (400, 400, "malformed request: the request line, a header or the chunked body is not valid HTTP/1.x "
               "(an HTTP/1.1 request also needs one Host header)"),
    (403, 403, "forbidden: nginx may not read a file it serves (its reason is in the log)"),
    (404, 404, routes.no_such_route()),
    (408, 408, "the request did not arrive in time: nginx waited 60 s for its headers or body"),
    (411, 411, "a request with a body needs a Content-Length or Transfer-Encoding: chunked"),
    (414, 414, f"URI too long: the request line may hold at most {HEADER_BUFFER - 2} bytes"),
    (494, 431, f"request header fields too large: at most {HEADER_BUFFER - 2} bytes per header line, and "
               f"about {HEADER_BUFFERS * HEADER_BUFFER // 1024} KiB for the request line and all headers"),
    (500, 500, "nginx failed this request (an internal error): its reason is in the log"),
    (501, 501, "Transfer-Encoding not implemented: send the body with a Content-Length or chunked"),
    (505, 505, "HTTP version not supported: use HTTP/1.0 or HTTP/1.1"),
)

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple

    Version = Tuple[int, ...]

# `nginx -V` of each binary: its version and its modules, asked once (an exec on PID 1's way to
# starting nginx; a restarted nginx is the same binary).
_BUILD_INFO: Dict[str, bytes] = {}


def find(program: str) -> Optional[str]:
    """The nginx executable, or None (then gunicorn binds the port itself)."""
    return capture.find_program(program)


def _build_info(binary: str) -> bytes:
    """`nginx -V`: `nginx version: nginx/1.22.1` and the configure flags, on stderr."""
    if binary not in _BUILD_INFO:
        out = capture.output([binary, "-V"], timeout=10)
        if out is None:
            return b""  # not kept: the next start asks again
        _BUILD_INFO[binary] = out
    return _BUILD_INFO[binary]


def version(binary: str) -> Version:
    match = re.search(rb"nginx/(\d+)\.(\d+)\.(\d+)", _build_info(binary))
    return tuple(int(part) for part in match.groups()) if match else (0,)


def argv(binary: str, runtime: RuntimeDir, nginx_version: Version) -> List[str]:
    command = [binary, "-p", runtime.root + "/", "-c", runtime.nginx_conf, "-g", "daemon off;"]
    if nginx_version >= (1, 19, 5):
        # Before reading its configuration nginx opens its compiled-in error log
        # (/var/log/nginx/error.log), which an unprivileged user cannot write.
        command[1:1] = ["-e", "stderr"]
    return command


def has_stub_status(binary: str) -> bool:
    """Whether this nginx was built with the stub_status module (`nginx -V` lists its configure flags)."""
    return b"http_stub_status_module" in _build_info(binary)


def worker_connections() -> int:
    """As many as the open-files limit allows (each proxied request holds two fds)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(64, min(4096, soft - 64))


def _quoted(text: str) -> str:
    """`text` as an nginx string literal: single-quoted, with nginx's escapes (\\\\, \\', \\n)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _json_text(message: str) -> str:
    """An error's JSON body (routes.error_body, the workers' too) as an nginx string literal."""
    return _quoted(routes.error_body(message).decode("utf-8"))


def _path_regex(route: routes.Route, segment: str) -> str:
    """The route's path as an nginx regex (unquoted: a row's path holds only letters, digits
    and `/._~-`), each <name> segment `segment`."""
    return routes.SEGMENT.sub(segment, route.path.replace(".", "\\."))


def _route_maps(table: Tuple[routes.Route, ...] = routes.TABLE) -> str:
    """$smsuper_route: the metrics' route label; $smsuper_allow: the route's Allow header.

    Both read the path as the client sent it ($request_uri): it is there even when an error
    page replaced the URI ($uri becomes /_smsuper/...) or the request line was never
    understood (then: `other`). A path nginx would normalise (//ping, /p%69ng) is `other` too:
    it is not a route as the platform sends it (and gunicorn would pass it on unnormalised)."""
    # $request_uri holds the query too: a segment stops at "?" as well as at "/".
    uris = [f"~^{_path_regex(route, '[^/?]+')}(\\?|$)" for route in table]
    labels = "".join(f"        {uri} {route.label};\n" for uri, route in zip(uris, table))
    allows = "".join(f'        {uri} "{route.allow()}";\n' for uri, route in zip(uris, table))
    # The Connection header of an upgraded row: `upgrade` when the client asks for one, else
    # none (nginx then keeps its connection to the worker for the next request).
    upgrade = '    map $http_upgrade $smsuper_upgrade {\n        default upgrade;\n        "" "";\n    }\n'
    return (f"    map $request_uri $smsuper_route {{\n{labels}        default {routes.OTHER};\n    }}\n"
            f"    map $request_uri $smsuper_allow {{\n{allows}        default \"\";\n    }}\n" + upgrade)


def _method_check(route: routes.Route) -> str:
    """In a route's location: any other method is nginx's 405 (then in JSON, with Allow)."""
    return f"            if ($request_method !~ ^({'|'.join(route.methods)})$) {{\n" \
           f"                return 405;\n            }}\n"


def _location(route: routes.Route) -> str:
    """`location = PATH` for an exact path; a regex location for a path with <name> segments
    (nginx tries these in the table's order, after every exact one)."""
    if route.pattern is None:
        return f"location = {route.path}"
    return f"location ~ ^{_path_regex(route, '[^/]+')}$"


def _route_locations(runtime: RuntimeDir, table: Tuple[routes.Route, ...] = routes.TABLE) -> str:
    """One location per row of the route table."""
    blocks = []
    for route in table:
        if route.answered_by in (routes.MANAGER, routes.MODEL, routes.REFUSED):
            from .multimodel import nginx_routes  # a multi-model endpoint's rows

            # Its own 502 and 503 (a model unloaded while nginx read the body): the others repeated.
            pages = _error_pages("            ", own_503=True).replace("            error_page 502 @died;\n", "")
            blocks.append(nginx_routes.location(route, runtime, _location(route), _method_check(route), pages))
        elif route.answered_by == routes.NGINX:
            # What nginx answers itself, it answers from the readiness flag.
            blocks.append(f"""        {_location(route)} {{
{_method_check(route)}            if (-f {runtime.ready_flag}) {{
                return 200 "";
            }}
            error_page 503 /_smsuper/ping-status;
{_error_pages("            ", own_503=True)}            return 503;
        }}
""")
        elif route.body == routes.UPGRADED:
            # A proxy_set_header here replaces all of the server's: Host and X-Forwarded-For again.
            # Once upgraded, nginx relays each read at once (proxy_buffering does not apply).
            blocks.append(f"""        {_location(route)} {{
{_method_check(route)}            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $smsuper_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout {STREAM_IDLE_TIMEOUT}s;
            proxy_send_timeout {STREAM_IDLE_TIMEOUT}s;
            send_timeout {STREAM_IDLE_TIMEOUT}s;
            proxy_pass http://{UPSTREAM};
        }}
""")
        else:
            streamed = "            proxy_buffering off;\n" if route.body == routes.STREAMED else ""
            blocks.append(f"""        {_location(route)} {{
{_method_check(route)}{streamed}            proxy_pass http://{UPSTREAM};
        }}
""")
    return "".join(blocks)


ERROR_PREFIX = "/_smsuper/error/"


def _error_pages(indent: str, own_503: bool = False) -> str:
    """error_page lines for every error nginx makes. A location that sets an error_page of
    its own (/ping: its 503) inherits none from the server, so it repeats these."""
    died = "error_page 502 @died;" if own_503 else "error_page 502 503 @died;"
    pages = [f"error_page {made} {'=' + str(answered) + ' ' if made != answered else ''}{ERROR_PREFIX}{made};"
             for made, answered, _ in NGINX_ERRORS]
    # "=": @not_allowed's own status goes out (its 405, or 404 for an unknown route).
    pages += ["error_page 405 = @not_allowed;", "error_page 413 @too_large;", died, "error_page 504 @too_slow;"]
    return "".join(f"{indent}{line}\n" for line in pages)


def _error_locations(not_found: str) -> str:
    """The locations behind _error_pages(). Internal URIs, not named locations: an error
    found before the request line was understood (400, 414, 505) has no URI, and nginx
    cannot send such a request to a named location. A 405 always has its URI, and goes to a
    named location because a redirect to a URI would turn its method into GET."""
    blocks = [f"        location = {ERROR_PREFIX}{made} {{\n            internal;\n"
              f"            return {answered} {_json_text(message)};\n        }}\n"
              for made, answered, message in NGINX_ERRORS]
    # $smsuper_route is a row's label here (else the route is unknown: 404), and nginx
    # accepts only letters, "_" and "-" in a method, so the body stays JSON.
    blocks.append(
        "        location @not_allowed {\n"
        '            if ($smsuper_allow = "") {\n'
        f"                return 404 {not_found};\n"
        "            }\n"
        "            add_header Allow $smsuper_allow always;\n"
        f"            return 405 {_json_text(routes.not_allowed('$request_method', '$smsuper_route', '$smsuper_allow'))};\n"
        "        }\n")
    return "".join(blocks)


def render(config: ServeConfig, runtime: RuntimeDir, nginx_version: Version, worker_processes: int,
           root_workers_as: Optional[Tuple[str, str]] = None, log_level: str = "warn",
           stub_status: bool = False, multi_model: bool = False) -> str:
    """nginx.conf. `root_workers_as` (user, group): when nginx starts as root, its
    workers would otherwise become `nobody`, who cannot enter the runtime directory."""
    # One buffer more than the limit: a chunked body of exactly the limit then
    # still fits in memory (nginx spools to disk once its buffer is full).
    body_buffer = min(config.max_payload_bytes, MEMORY_BUFFER_CAP) + PROXY_BUFFER
    proxy_buffers = max(8, body_buffer // PROXY_BUFFER)
    user = f"user {root_workers_as[0]} {root_workers_as[1]};\n" if root_workers_as else ""
    upstream_keepalive_timeout = (
        f"        keepalive_timeout {timeouts.UPSTREAM_KEEPALIVE}s;\n" if nginx_version >= (1, 15, 3) else ""
    )
    upstream_servers = f"        server unix:{runtime.socket} max_fails=0;\n" * UPSTREAM_TRIES
    temp_paths = "".join(
        f"    {kind}_temp_path {runtime.nginx_temp(kind)};\n" for kind in NGINX_TEMP_KINDS
    )
    too_large = _json_text(f"request body larger than SAGEMAKER_MAX_PAYLOAD_IN_MB={config.max_payload_mb} MiB "
                           f"({config.max_payload_bytes} bytes)")
    too_slow = _json_text(f"the model did not answer within SAGEMAKER_MODEL_SERVER_TIMEOUT={config.timeout} s")
    died = _json_text("the model server failed this request: its worker died or the server is restarting")
    table = routes.table(multi_model)
    not_found = _json_text(routes.no_such_route(table))
    # A multi-model endpoint's access log also names the model and the seconds (PID 1 counts them per model).
    mme_map, log_prefix, log_suffix = "", "'$smsuper_route $status '", ""
    if multi_model:
        from .multimodel import nginx_routes

        mme_map, log_prefix, log_suffix = nginx_routes.model_map(), nginx_routes.LOG_PREFIX, nginx_routes.LOG_SUFFIX
    # nginx's figures for PID 1's metrics endpoint: on a unix socket in the runtime
    # directory, so nothing outside the container reaches them and no port is taken.
    status_server = f"""
    server {{
        listen unix:{runtime.nginx_status};
        access_log off;
        location = /stub_status {{
            stub_status;
        }}
        location / {{
            return 404;
        }}
    }}
""" if stub_status else ""
    return f"""# Written by smsuper serve at every start; edits are lost.
{user}worker_processes {worker_processes};
pid {runtime.nginx_pid};
error_log stderr {log_level};
worker_shutdown_timeout {config.nginx_shutdown_timeout:g}s;

events {{
    worker_connections {worker_connections()};
}}

http {{
    server_tokens off;
    charset off;
    default_type application/json;
{temp_paths}
{_route_maps(table)}{mme_map}    # Each line starts with the route label and the status PID 1 counts (access_log.py); PID 1
    # prints the rest, leaving out /ping unless SMSUPER_LOG_PING (the platform pings every few
    # seconds and would drown everything else).
    log_format smsuper {log_prefix}
                       '$time_iso8601 $remote_addr "$request" $status $body_bytes_sent '
                       '$request_time $upstream_response_time{log_suffix}';
    # Lines are batched up to 4 KiB (at most 1 s late): one wake-up of PID 1 per batch
    # instead of per request, and 4 KiB is PIPE_BUF, so each write into the FIFO stays atomic.
    access_log {runtime.access_log} smsuper buffer=4k flush=1s;

    keepalive_timeout {timeouts.CLIENT_KEEPALIVE}s;
    keepalive_requests 100000;
    client_max_body_size {config.max_payload_bytes};
    client_body_buffer_size {body_buffer};
    client_header_buffer_size 1k;
    large_client_header_buffers {HEADER_BUFFERS} {HEADER_BUFFER};

    upstream {UPSTREAM} {{
{upstream_servers}        keepalive 64;
{upstream_keepalive_timeout}    }}

    server {{
        listen {config.port} backlog=4096;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_connect_timeout {timeouts.UPSTREAM_CONNECT}s;
        proxy_send_timeout {config.timeout}s;
        proxy_read_timeout {config.timeout}s;
        proxy_buffer_size {PROXY_BUFFER};
        proxy_buffers {proxy_buffers} {PROXY_BUFFER};
        # A POST that already reached a worker is never sent again. The invalid header is what
        # a worker's guard answers for a request no worker has read (a stuck worker's idle
        # connection it took back): that one goes to another worker.
        proxy_next_upstream invalid_header non_idempotent;

{_error_pages("        ")}
{_route_locations(runtime, table)}        location = /_smsuper/ping-status {{
            internal;
            etag off;
            alias {runtime.ping_status};
        }}
        location / {{
            return 404 {not_found};
        }}
{_error_locations(not_found)}        location @too_large {{
            return 413 {too_large};
        }}
        location @too_slow {{
            return 504 {too_slow};
        }}
        location @died {{
            return 502 {died};
        }}
    }}
{status_server}}}
"""
