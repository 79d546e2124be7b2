"""Streamed answers: a handler that produces an iterator is answered chunk by chunk.

The handlers' API (style A): predict_fn, output_fn or transform_fn returns an
iterator or generator instead of a value, and /invocations answers with
chunked transfer encoding, each item sent as soon as it is produced:

  yield bytes or str          sent as they are (str as UTF-8)
  yield anything else         one JSON line (json.dumps(item) + "\\n")
  return sse(items)           text/event-stream: each item one `data:` event
                              (str as it is, anything else as JSON; an Event
                              for a named event, an id or a retry)
  return jsonlines(items)     application/jsonlines: each item one JSON line

    from smsuper.serve.worker.streaming import sse

    def predict_fn(data, model):
        def tokens():
            for token in model.generate(data["prompt"]):
                yield {"token": token}
        return sse(tokens())

The server's side (Streamed, the WSGI iterable the worker hands gunicorn):

  nginx       the answer carries `X-Accel-Buffering: no`, so nginx passes it on
              unbuffered (/invocations stays buffered for every other answer;
              nginx does not pass that header on to the client)
  heartbeat   each chunk tells the gunicorn master the worker is alive, so a
              stream may run past the worker timeout while chunks keep coming;
              the gap between two chunks stays bounded by nginx's
              proxy_read_timeout (SAGEMAKER_MODEL_SERVER_TIMEOUT)
  total bound SMSUPER_STREAM_TIMEOUT: a stream still going after it is stopped
              (its generator closed) and ends as a failed one
  a failure   an exception in the middle of a stream is logged once with its
              traceback; an SSE stream then gets one `event: error` with
              {"error": "..."}, and every stream ends without its terminating
              chunk (the connection is shut), so a client can tell it from a
              normal end
  the client  gone mid-stream: gunicorn's next write fails and it closes this
              iterable, which closes the handler's generator (its finally runs)
              and frees the worker
  metrics     time to first byte, duration, chunks and bytes, streams in flight
              (metrics/worker/serving.py)
"""

from __future__ import annotations

import json
import socket
import time
import traceback
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from ... import log
from ...metrics.worker import serving as serving_metrics

SSE = "text/event-stream"
JSONLINES = "application/jsonlines"
# Tells nginx to pass this answer on unbuffered (nginx's own header; it never reaches the client).
UNBUFFERED = ("X-Accel-Buffering", "no")
# How often a stream tells the master the worker is alive (a file's mtime: a system call).
BEAT_EVERY = 1.0

_heartbeat: Optional[Callable[[], None]] = None


def set_heartbeat(notify: Optional[Callable[[], None]]) -> None:
    """In a gunicorn worker (post_fork): the worker's notify(), called while a stream flows."""
    global _heartbeat
    _heartbeat = notify


def is_stream(value: Any) -> bool:
    """Whether a handler's result is to be streamed: an iterator (a generator among them),
    not a value such as a list or a str, which is encoded whole."""
    return isinstance(value, Stream) or (hasattr(value, "__next__") and hasattr(value, "__iter__")
                                         and not isinstance(value, (bytes, str, bytearray)))


class Event:
    """One server-sent event with a name, an id or a retry: yield it inside sse(...)."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, data: Any, event: Optional[str] = None, id: Optional[str] = None,
                 retry: Optional[int] = None):
        self.data = data
        self.event = event
        self.id = id
        self.retry = retry


def _json(item: Any) -> str:
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"))


def _field(name: str, value: str) -> str:
    # A field's value ends at a line end: make each line its own field (SSE's data rule).
    return "".join(f"{name}: {line}\n" for line in value.split("\n"))


def sse_event(item: Any) -> bytes:
    """One item as a server-sent event."""
    event = item if isinstance(item, Event) else Event(item)
    data = event.data
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    text = data if isinstance(data, str) else _json(data)
    head = ""
    if event.event:
        head += _field("event", str(event.event).replace("\n", " "))
    if event.id is not None:
        head += _field("id", str(event.id).replace("\n", " "))
    if event.retry is not None:
        head += f"retry: {int(event.retry)}\n"
    return (head + _field("data", text) + "\n").encode("utf-8")


def jsonline(item: Any) -> bytes:
    return (_json(item) + "\n").encode("utf-8")


def plain_chunk(item: Any) -> bytes:
    """An item of a bare iterator: bytes and str as they are, anything else one JSON line."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    return jsonline(item)


class Stream:
    """An iterator of items, how each becomes bytes, its content type, and what a failure sends."""

    def __init__(self, items: Iterable[Any], content_type: Optional[str] = None,
                 encode: Callable[[Any], bytes] = plain_chunk,
                 on_error: Optional[Callable[[str], bytes]] = None):
        self.items = iter(items)
        self.content_type = content_type
        self.encode = encode
        self.on_error = on_error

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return self.encode(next(self.items))

    def close(self) -> None:
        close = getattr(self.items, "close", None)
        if close is not None:
            close()


def sse(items: Iterable[Any]) -> Stream:
    """A text/event-stream answer: each item one event (see Event for named ones). A failure
    mid-stream sends `event: error` with {"error": "..."} before the stream is cut."""
    return Stream(items, SSE, sse_event, lambda message: sse_event(Event({"error": message}, event="error")))


def jsonlines(items: Iterable[Any]) -> Stream:
    """An application/jsonlines answer: each item one JSON line."""
    return Stream(items, JSONLINES, jsonline)


def framed(items: Any, accept: str) -> Stream:
    """A streamed prediction with the default output_fn: framed as the negotiated type asks
    (events for text/event-stream, lines for application/jsonlines), else item by item."""
    if isinstance(items, Stream):
        return items
    if accept == SSE:
        return sse(items)
    if accept == JSONLINES:
        return jsonlines(items)
    return Stream(items, accept)


class Streamed:
    """The WSGI iterable of a streamed answer: what gunicorn iterates and closes."""

    def __init__(self, body: Iterable[bytes], environ: Dict[str, Any], began: float, limit: float,
                 where: str):
        self.body = body
        self.items = iter(body)
        self.environ = environ
        self.began = began
        self.limit = limit  # seconds in all; 0: no bound
        self.where = where
        self.on_error = getattr(body, "on_error", None)
        self.chunks = 0
        self.bytes = 0
        self.first: Optional[float] = None
        self.beaten = 0.0
        self.done = False
        self.cut = False  # the stream failed: shut the connection once its last words are out
        self.closed = False
        serving_metrics.stream_started()

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.cut:
            self._shut()
            raise StopIteration
        if self.done:
            raise StopIteration
        while True:
            try:
                chunk = next(self.items)
            except StopIteration:
                self.done = True
                raise
            except Exception as error:
                return self._fail(f"{type(error).__name__}: {error}", error)
            if isinstance(chunk, str):
                chunk = chunk.encode("utf-8")
            now = time.perf_counter()
            if self.limit and now - self.began > self.limit:
                return self._fail(f"the stream ran longer than SMSUPER_STREAM_TIMEOUT={self.limit:g} s")
            if chunk:
                break  # an empty chunk would end the chunked body: skip it
        if self.first is None:
            self.first = now
        self.chunks += 1
        self.bytes += len(chunk)
        if _heartbeat is not None and now - self.beaten >= BEAT_EVERY:
            self.beaten = now
            try:
                _heartbeat()
            except Exception:
                pass
        return chunk

    def _fail(self, message: str, error: Optional[BaseException] = None) -> bytes:
        """Log the failure once, then send its last words (an SSE error event) or cut at once."""
        self.done = True
        where = f"{self.where}: the stream failed after {self.chunks} chunks ({self.bytes} bytes): {message}"
        if error is not None:
            cause = getattr(error, "error", error)
            trace = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)).rstrip()
            log.error(f"{where}\n{trace}")
        else:
            log.error(where)
        self._close_items()
        self.cut = True
        if self.on_error is not None:
            try:
                return self.on_error(message)
            except Exception:
                pass
        self._shut()
        raise StopIteration

    def _shut(self) -> None:
        """End the answer without its terminating chunk: the client sees a broken body, not an end."""
        sock = self.environ.get("gunicorn.socket")
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_items(self) -> None:
        close = getattr(self.body, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                log.error(f"{self.where}: closing the stream's generator raised:\n{traceback.format_exc().rstrip()}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.cut:
            self._close_items()  # a client gone mid-stream: the generator's finally runs now
        end = time.perf_counter()
        serving_metrics.stream_ended(None if self.first is None else self.first - self.began, end - self.began,
                                     self.chunks, self.bytes)
