"""The platform's routes and the methods each accepts: one table, read by nginx's
configuration, the Flask app and the metrics (their `route` label)."""

METHODS = {
    "/ping": ("GET", "HEAD"),
    "/invocations": ("POST",),
    "/execution-parameters": ("GET", "HEAD"),
}
# The `route` label of every other path (bounded label values).
OTHER = "other"
NO_SUCH_ROUTE = "no such route: use /ping, /invocations or /execution-parameters"


def allow(path: str) -> str:
    """The Allow header of a 405 on `path`."""
    return ", ".join(METHODS[path])
