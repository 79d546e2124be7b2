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


class CloseStream(Exception):
    """Raised by a stream_fn to end its bidirectional stream with this WebSocket close code
    (1000 normal, 4000-4999 the application's own; RFC 6455 7.4) and reason (at most 123
    bytes of UTF-8, longer is cut). Returning from stream_fn closes with 1000."""

    def __init__(self, code: int = 1000, reason: str = ""):
        if not (code in (1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011) or 3000 <= code <= 4999):
            raise ValueError(f"CloseStream({code}): a close code is 1000-1011 (not 1004-1006) or 3000-4999")
        super().__init__(f"close {code}: {reason}")
        self.code = code
        self.reason = reason
