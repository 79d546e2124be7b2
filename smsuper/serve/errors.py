"""The errors user code may raise to choose its status: `from smsuper.serve.errors import BadRequest`.

The name user code imports (docs/serving.md); the classes live with the rest
of the worker's code in worker/errors.py.
"""

from .worker.errors import BadRequest, NotAcceptable, ServeError, UnsupportedContentType

__all__ = ["BadRequest", "NotAcceptable", "ServeError", "UnsupportedContentType"]
