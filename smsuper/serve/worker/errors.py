"""Errors that become an HTTP status with a short JSON body.

User code may raise these (`from smsuper.serve.errors import BadRequest`), or
any exception of its own with an integer `status_code` attribute between 400
and 599: the status and str(exception) are used as they are. Anything else
raised by user code is a 500.
"""

from __future__ import annotations

from typing import Optional


class ServeError(Exception):
    status = 500

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ServeError):
    """The body could not be decoded as the content type it claims."""

    status = 400


class UnsupportedContentType(ServeError):
    status = 415


class NotAcceptable(ServeError):
    status = 406


class ModelNotReady(ServeError):
    """The model is still loading (only reachable without nginx)."""

    status = 503


class ModelLoadFailed(ServeError):
    status = 500


def status_of(error: BaseException) -> Optional[int]:
    """The HTTP status an exception asks for, or None for an ordinary (500) error."""
    if isinstance(error, ServeError):
        return error.status
    status = getattr(error, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
        return status
    return None
