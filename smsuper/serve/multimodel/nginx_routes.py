"""nginx's side of a multi-model endpoint: the /models routes (rendered by PID 1 into nginx.conf).

  /models, /models/NAME     proxied to PID 1's management API (api.py) over its unix socket
  /models/NAME/invoke       proxied to NAME's own gunicorn socket as /invocations, while
                            PID 1's marker ROOT/models/NAME/serving exists; else 404
  /invocations              400: this endpoint serves several models, name one

NAME is taken from the request as the client sent it ($request_uri) and only when
it matches names.PATTERN, so the socket path built from it never leaves
ROOT/models (a name nginx would decode, such as %2e%2e, is not a name: 404).
The marker lives in PID 1's own directory, so nothing but PID 1 decides what
is routed. The access log carries the model and the request's seconds, which
PID 1 counts per loaded model, and the X-Amzn-SageMaker-Target-Model header.
"""

from __future__ import annotations

import json

from . import layout, names

# A load may take minutes (the platform waits up to 360 s), an unload drains the model's requests.
MANAGEMENT_TIMEOUT = 360
LOG_PREFIX = "'$smsuper_route $status $smsuper_model $request_time '"
LOG_SUFFIX = " target_model=\"$http_x_amzn_sagemaker_target_model\""
INVOCATIONS_REFUSED = ("this endpoint serves several models (SAGEMAKER_MULTI_MODEL=true): invoke one with "
                       "POST /models/NAME/invoke, or load it first with POST /models")


def _literal(body: dict) -> str:
    text = json.dumps(body)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_map() -> str:
    """$smsuper_model: the model an invocation names, or `-`."""
    return (f"    map $request_uri $smsuper_model {{\n"
            f'        "~^/models/(?<smsuper_name>{names.PATTERN})/invoke(\\?|$)" $smsuper_name;\n'
            f"        default -;\n    }}\n")


def locations(runtime, method_check, error_pages) -> str:
    """The server's locations for the MME routes; `method_check(path)` is nginx.py's 405 check,
    `error_pages(indent)` its error_page lines for a location that sets its own 502 and 503."""
    management = f"http://unix:{layout.management_socket(runtime)}:"
    models = layout.models_dir(runtime)
    sockets = layout.sockets_dir(runtime)
    not_loaded = "'{\"error\": \"model $smsuper_model is not loaded: load it with POST /models\"}'"
    return f"""        location = /invocations {{
            return 400 {_literal({"error": INVOCATIONS_REFUSED})};
        }}
        location = /models {{
{method_check("/models")}            proxy_read_timeout {MANAGEMENT_TIMEOUT}s;
            proxy_pass {management};
        }}
        location ~ ^/models/[^/]+/invoke$ {{
{method_check("/models/{name}/invoke")}            if (!-e {models}/$smsuper_model/serving) {{
                return 404 {not_loaded};
            }}
            # nginx reads the body before it connects: a model unloaded meanwhile is 404, not 502.
{error_pages("            ")}            error_page 502 503 = @smsuper_model_gone;
            proxy_set_header Connection close;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_pass http://unix:{sockets}/$smsuper_model:/invocations;
        }}
        location @smsuper_model_gone {{
            if (!-e {models}/$smsuper_model/serving) {{
                return 404 {not_loaded};
            }}
            return 502 {_literal({"error": "the model's server failed this request: its worker died"})};
        }}
        location ~ ^/models/[^/]+$ {{
{method_check("/models/{name}")}            proxy_read_timeout {MANAGEMENT_TIMEOUT}s;
            proxy_pass {management};
        }}
"""
