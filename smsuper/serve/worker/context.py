"""The `context` argument handler functions may take as their last parameter.

It carries the request's headers (X-Amzn-SageMaker-Custom-Attributes among
them) and lets the handler set response headers, custom attributes above all:
the platform returns X-Amzn-SageMaker-Custom-Attributes to the caller only
when the response sets it. The two methods of the inference toolkit's
context (get_request_header(idx, name), set_response_header(idx, name,
value)) are there too, so handlers written for it keep working, and so is its
system_properties dict: model_dir, and gpu_id, this worker's GPU (gpus.py),
None on a host without GPUs. `session` is the request's stateful session
(sessions.py: a store of JSON values by key, shared by every worker), or None.

It is the handlers' API and nothing more: the inference code makes one per
call with what it knows (the negotiated types, the model directory) and reads
back only the headers the handler set, into the Answer (seam.py).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..master import gpus

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"


class Context:
    def __init__(self, headers: Optional[Mapping[str, str]] = None, model_dir: str = "",
                 content_type: str = "", accept: str = "", environ: Optional[Mapping[str, Any]] = None,
                 session: Any = None):
        # Header names are case-insensitive: keep them under their lower-case name.
        self._headers: Dict[str, str] = {k.lower(): v for k, v in (headers or {}).items()}
        # A WSGI environ is read lazily: most requests never look at a header.
        self._environ = environ
        self.model_dir = model_dir
        self.content_type = content_type  # without parameters, lower-case
        self.accept = accept  # the type chosen for the response
        self.response_headers: Dict[str, str] = {}
        # The request's stateful session (sessions.Session), None without one.
        self.session = session

    # ---- request ---------------------------------------------------------------
    @property
    def headers(self) -> Dict[str, str]:
        """The request's headers, names in lower case."""
        found = dict(self._headers)
        for key, value in (self._environ or {}).items():
            if key.startswith("HTTP_"):
                found[key[5:].replace("_", "-").lower()] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                found[key.replace("_", "-").lower()] = value
        return found

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        if self._environ is not None:
            key = name.upper().replace("-", "_")
            value = self._environ.get(key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key)
            if value is not None:
                return value
        return self._headers.get(name.lower(), default)

    @property
    def path(self) -> str:
        """The request's path, without its query."""
        return (self._environ or {}).get("PATH_INFO", "")

    @property
    def query_string(self) -> str:
        """The query as the client sent it (after `?`, still percent-encoded; `` without one):
        `urllib.parse.parse_qs(context.query_string)` parses it."""
        return (self._environ or {}).get("QUERY_STRING", "")

    @property
    def custom_attributes(self) -> Optional[str]:
        return self.header(CUSTOM_ATTRIBUTES)

    @property
    def inference_id(self) -> Optional[str]:
        return self.header("X-Amzn-SageMaker-Inference-Id")

    @property
    def target_model(self) -> Optional[str]:
        return self.header("X-Amzn-SageMaker-Target-Model")

    # ---- response --------------------------------------------------------------
    def set_custom_attributes(self, value: str) -> None:
        self.response_headers[CUSTOM_ATTRIBUTES] = str(value)

    def set_response_header(self, *args: Any) -> None:
        """set_response_header(name, value), or the toolkit's (index, name, value)."""
        if len(args) == 3:
            args = args[1:]
        if len(args) != 2:
            raise TypeError("set_response_header(name, value)")
        name, value = args
        self.response_headers[str(name)] = str(value)

    # ---- inference toolkit compatibility ------------------------------------------
    def get_request_header(self, index: int, name: str) -> Optional[str]:
        return self.header(name)

    @property
    def system_properties(self) -> Dict[str, Any]:
        return {"model_dir": self.model_dir, "gpu_id": gpus.this_process()}
