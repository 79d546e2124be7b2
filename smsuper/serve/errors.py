"""The errors user code may raise to choose its status: `from smsuper.serve.errors import BadRequest`
(and CloseStream, a bidirectional stream's close code).

The name user code imports (docs/serving.md); the classes live with the rest
of the worker's code in worker/errors.py.
"""

from .worker.errors import BadRequest, CloseStream, NotAcceptable, ServeError, UnsupportedContentType

__all__ = ["BadRequest", "CloseStream", "NotAcceptable", "ServeError", "UnsupportedContentType"]
