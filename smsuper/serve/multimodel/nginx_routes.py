"""nginx's side of a multi-model endpoint: the locations of the rows of routes.MULTI_MODEL_TABLE
that nginx neither answers itself nor passes to the one gunicorn (rendered by PID 1 into nginx.conf).

  MANAGER   /models, /models/<name>   proxied to PID 1's management API (api.py) over its unix socket
  MODEL     /models/<name>/invoke     proxied to that model's own gunicorn socket as /invocations,
                                      while PID 1's marker ROOT/models/NAME/serving exists; else 404
  REFUSED   /invocations              400: this endpoint serves several models, name one

NAME is taken from the request as the client sent it ($request_uri) and only when
it matches names.PATTERN, so the socket path built from it never leaves the
models' directories (a name nginx would decode, such as %2e%2e, is not a name:
404). The marker lives in PID 1's own directory, so nothing but PID 1 decides
what is routed. The access log carries the model and the request's seconds,
which PID 1 counts per loaded model, and the X-Amzn-SageMaker-Target-Model header.
"""

from __future__ import annotations

from .. import routes
from . import layout, names

# A load may take minutes (the platform waits up to 360 s), an unload drains the model's requests.
MANAGEMENT_TIMEOUT = 360
LOG_PREFIX = "'$smsuper_route $status $smsuper_model $request_time '"
LOG_SUFFIX = " target_model=\"$http_x_amzn_sagemaker_target_model\""
INVOCATIONS_REFUSED = ("this endpoint serves several models (SAGEMAKER_MULTI_MODEL=true): invoke one with "
                       "POST /models/NAME/invoke, or load it first with POST /models")


def _literal(message: str) -> str:
    """An error's JSON body as an nginx string literal (nginx expands the $variables in it)."""
    text = routes.error_body(message).decode("utf-8")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def model_map() -> str:
    """$smsuper_model: the model an invocation names, or `-`."""
    return (f"    map $request_uri $smsuper_model {{\n"
            f'        "~^/models/(?<smsuper_name>{names.PATTERN})/invoke(\\\\?|$)" $smsuper_name;\n'
            f"        default -;\n    }}\n")


def location(route: routes.Route, runtime, location_line: str, method_check: str, error_pages: str) -> str:
    """The location block of one row. `error_pages`: nginx.py's error_page lines without those
    for 502 and 503, for a location that sets its own."""
    if route.answered_by == routes.REFUSED:
        return f"""        {location_line} {{
            return 400 {_literal(INVOCATIONS_REFUSED)};
        }}
"""
    if route.answered_by == routes.MANAGER:
        return f"""        {location_line} {{
{method_check}            proxy_read_timeout {MANAGEMENT_TIMEOUT}s;
            proxy_pass http://unix:{layout.management_socket(runtime)}:;
        }}
"""
    models = layout.models_dir(runtime)
    not_loaded = _literal("model $smsuper_model is not loaded: load it with POST /models")
    return f"""        {location_line} {{
{method_check}            if (!-e {models}/$smsuper_model/serving) {{
                return 404 {not_loaded};
            }}
            # nginx reads the body before it connects: a model unloaded meanwhile is 404, not 502.
{error_pages}            error_page 502 503 = @smsuper_model_gone;
            proxy_set_header Connection close;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_pass http://unix:{layout.sockets_dir(runtime)}/$smsuper_model:/invocations;
        }}
        location @smsuper_model_gone {{
            if (!-e {models}/$smsuper_model/serving) {{
                return 404 {not_loaded};
            }}
            return 502 {_literal("the model's server failed this request: its worker died")};
        }}
"""
