"""The platform's routes and the methods each accepts: one table, read by nginx's
configuration, the Flask app and the metrics (their `route` label)."""

METHODS = {
    "/ping": ("GET", "HEAD"),
    "/invocations": ("POST",),
    "/execution-parameters": ("GET", "HEAD"),
}
# Multi-model endpoints (SAGEMAKER_MULTI_MODEL=true, serve/multimodel/): `{name}` is one path segment.
MULTI_MODEL_METHODS = {
    "/models": ("GET", "POST"),
    "/models/{name}": ("GET", "DELETE"),
    "/models/{name}/invoke": ("POST",),
}
# The `route` label of every other path (bounded label values).
OTHER = "other"
NO_SUCH_ROUTE = "no such route: use /ping, /invocations or /execution-parameters"


def allow(path: str) -> str:
    """The Allow header of a 405 on `path`."""
    return ", ".join(METHODS.get(path) or MULTI_MODEL_METHODS[path])


def pattern(path: str) -> str:
    """A regular expression for `path` as the client sends it (nginx's $request_uri)."""
    return "^" + path.replace("{name}", "[^/?]+") + "(\\?|$)"
