"""Style A: the user's handler functions, found, imported and called.

The module is SAGEMAKER_PROGRAM (default inference.py), looked up in
SAGEMAKER_SUBMIT_DIRECTORY (a local directory), then /opt/ml/model/code,
then /opt/ml/code. It may define:

  model_fn(model_dir)                                -> model     (required)
  input_fn(body, content_type)                       -> data      (default: codecs.decode)
  predict_fn(data, model)                            -> prediction
        (default: model.predict(data), else model(data))
  predict_batch_fn(inputs, model)                    -> list of predictions
        (server-side batching, SMSUPER_BATCH_SIZE > 1: `inputs` is the list of
        a batch's decoded inputs, one per request; it returns one prediction per
        input, in order, and an item that is an exception fails its request
        alone. Without it a batch's inputs are stacked for predict_fn when they
        are numpy arrays of 2 or more dimensions with the same row shape, and the
        prediction is split by each request's row count; inputs that do not
        stack are predicted one by one. With batching off, a module with only
        predict_batch_fn is called with a list of one: batching.py)
  output_fn(prediction, accept)                      -> body      (default: codecs.encode)
  transform_fn(model, body, content_type, accept)    -> body      (instead of the three above)
  execution_parameters_fn()                          -> dict      (answers /execution-parameters)
  stream_fn(model, messages)                         -> iterable of str or bytes
        (a bidirectional stream: `messages` yields each WebSocket message the
        client sends, str for text and bytes for binary; each item the
        function yields goes back as one message of its kind: websocket.py)

Each may take one more trailing parameter, `context` (see context.py).
`body` is what the official toolkits pass: a str (decoded UTF-8) for
application/json and text/csv, the raw bytes for every other type.
output_fn and transform_fn may return bytes or str (sent as the negotiated
type), a (body, content_type) pair, a Flask/werkzeug Response, or any other
value, which the default encoder then writes in the negotiated type.
An iterator or generator (from predict_fn with the default output_fn, or from
output_fn or transform_fn) is streamed, item by item (streaming.py).

Handlers.invoke is the inference side of the seam (seam.py): a Request in, an
Answer out, with the headers the user set on `context` and the phases' times.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import time
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from ..program import HandlerError
from . import codecs, negotiation
from .context import Context
from .errors import NotAcceptable, ServeError, status_of
from .seam import Answer, Phases, Request
from .streaming import SSE, Stream, framed, is_stream

Message = Union[str, bytes]  # one WebSocket message: text or binary


def import_file(path: str) -> ModuleType:
    """Import `path` under its own name, with its directory on sys.path for its helpers."""
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HandlerError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickled objects refer to classes by module name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _takes_context(function: Callable, arity: int) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return True
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) > arity


class UserFunction:
    """One handler function; passes `context` only when it has room for it."""

    def __init__(self, name: str, function: Callable, arity: int):
        self.name = name
        self.function = function
        self.with_context = _takes_context(function, arity)

    def __call__(self, context: Context, *args: Any) -> Any:
        if self.with_context:
            return self.function(*args, context)
        return self.function(*args)


class UserCodeError(Exception):
    """User code raised: carries which function, for the log and the 500 body."""

    def __init__(self, function: str, error: BaseException):
        super().__init__(f"{function} raised {type(error).__name__}: {error}")
        self.function = function
        self.error = error
        self.status = status_of(error)


def call(function: UserFunction, context: Context, *args: Any) -> Any:
    try:
        return function(context, *args)
    except ServeError:
        raise
    except Exception as error:
        raise UserCodeError(function.name, error) from error


class Handlers:
    """The user's functions with the defaults filled in."""

    def __init__(self, module: ModuleType, default_accept: str, json_allow_nan: bool = False,
                 model_dir: str = ""):
        self.module = module
        self.default_accept = default_accept
        self.json_allow_nan = json_allow_nan
        self.model_dir = model_dir

        def find(name: str, arity: int) -> Optional[UserFunction]:
            function = getattr(module, name, None)
            return UserFunction(name, function, arity) if callable(function) else None

        self.model_fn = find("model_fn", 1)
        self.input_fn = find("input_fn", 2)
        self.predict_fn = find("predict_fn", 2)
        self.predict_batch_fn = find("predict_batch_fn", 2)
        # Set by the service when SMSUPER_BATCH_SIZE > 1 (batching.Batcher): predictions go through it.
        self.batcher: Any = None
        self.output_fn = find("output_fn", 2)
        self.transform_fn = find("transform_fn", 4)
        self.execution_parameters_fn = find("execution_parameters_fn", 0)
        self.stream_fn = find("stream_fn", 2)
        self._chosen: Dict[Optional[str], Optional[str]] = {}
        # The user decodes the body itself, or the default input_fn must know its type.
        self.user_decodes = self.transform_fn is not None or self.input_fn is not None
        if self.model_fn is None:
            raise HandlerError(f"{module.__file__} defines no model_fn(model_dir): it must load and return the model")

    def load_model(self, model_dir: str) -> Any:
        return call(self.model_fn, Context(model_dir=model_dir), model_dir)

    def stream(self, model: Any, messages: Iterator[Message], context: Context) -> Iterator[Message]:
        """The outgoing messages of one bidirectional stream. The user's errors surface while
        the result is iterated (stream_fn is usually a generator): the caller reports them."""
        assert self.stream_fn is not None
        result = self.stream_fn(context, model, messages)
        return iter(()) if result is None else iter(result)

    # ---- one request ---------------------------------------------------------------
    def _response_type(self, accept_header: Optional[str]) -> str:
        # Clients send the same few Accept headers over and over: remember the answers.
        chosen = self._chosen.get(accept_header, "")
        if chosen == "":
            user_encodes = self.transform_fn is not None or self.output_fn is not None
            # text/event-stream: the default output_fn frames a streamed prediction's items as events.
            supported = None if user_encodes else [*codecs.ENCODERS, SSE]
            chosen = negotiation.choose(accept_header, self.default_accept, supported)
            if len(self._chosen) < 256:
                self._chosen[accept_header] = chosen
        if chosen is None:
            raise NotAcceptable(f"cannot answer in {accept_header}: the default output_fn writes "
                                f"{', '.join(codecs.ENCODERS)}")
        return chosen

    def _predict(self, context: Context, data: Any, model: Any) -> Any:
        if self.predict_fn is not None:
            return call(self.predict_fn, context, data, model)
        if self.predict_batch_fn is not None:
            output = self._predict_batch(context, [data], model)[0]
            if isinstance(output, BaseException):
                raise output
            return output
        try:
            if hasattr(model, "predict"):
                return model.predict(data)
            if callable(model):
                return model(data)
        except Exception as error:
            raise UserCodeError("the default predict_fn (model.predict / model())", error) from error
        raise ServeError("the handler module defines no predict_fn and the model has no predict() "
                         "and is not callable")

    # ---- a batch of requests (batching.py) ---------------------------------------------
    def predict_together(self, inputs: List[Any], model: Any) -> List[Any]:
        """One prediction per input, from as few calls of the model as the inputs allow; an item
        may be the exception that fails its request alone. The user's function gets a context of
        its own (the batch's: no request's headers; output_fn sees each request's)."""
        context = Context(model_dir=self.model_dir)
        if self.predict_batch_fn is not None:
            return self._predict_batch(context, inputs, model)
        if len(inputs) == 1:
            return [self._predict(context, inputs[0], model)]
        rows = _row_counts(inputs)
        if rows is None:  # nothing to stack: each on its own, and each failure its own
            outputs: List[Any] = []
            for data in inputs:
                try:
                    outputs.append(self._predict(context, data, model))
                except Exception as error:
                    outputs.append(error)
            return outputs
        np = codecs.numpy_module()
        prediction = self._predict(context, np.concatenate(inputs), model)
        total = sum(rows)
        try:
            count = len(prediction)
        except TypeError:
            count = None
        if count != total:
            who = "predict_fn" if self.predict_fn is not None else "the default predict_fn (model.predict / model())"
            got = f"{count} row{'' if count == 1 else 's'}" if count is not None else f"a {type(prediction).__name__}"
            raise ServeError(f"{who} returned {got} for a batch of {len(inputs)} requests with {total} rows in "
                             f"all (SMSUPER_BATCH_SIZE > 1 stacks the requests' rows): return one row per input "
                             f"row, or define predict_batch_fn(inputs, model) to batch another way")
        outputs = []
        start = 0
        for count in rows:
            outputs.append(prediction[start:start + count])
            start += count
        return outputs

    def _predict_batch(self, context: Context, inputs: List[Any], model: Any) -> List[Any]:
        assert self.predict_batch_fn is not None
        outputs = call(self.predict_batch_fn, context, inputs, model)
        try:
            outputs = list(outputs)
        except TypeError:
            outputs = None
        if outputs is None or len(outputs) != len(inputs):
            got = f"{len(outputs)} items" if outputs is not None else "no list"
            raise ServeError(f"predict_batch_fn returned {got} for {len(inputs)} inputs: it must return a list "
                             f"with one prediction per input, in order")
        return [UserCodeError("predict_batch_fn", output) if isinstance(output, Exception) else output
                for output in outputs]

    def invoke(self, model: Any, request: Request, session: Any = None) -> Answer:
        """Run one prediction; `session`: the request's stateful session (sessions.py), if any."""
        body = request.body
        content_type = negotiation.media_type(request.content_type) or codecs.JSON
        accept = self._response_type(request.accept)
        # The one check of the content type (415), before any user code runs.
        decode = None if self.user_decodes else codecs.decoder(content_type)
        context = Context(environ=request.environ, model_dir=self.model_dir, content_type=content_type,
                          accept=accept, session=session)
        clock = time.perf_counter
        began = clock()
        if self.transform_fn is not None:
            result = call(self.transform_fn, context, model, codecs.for_handlers(body, content_type),
                          content_type, accept)
            return self._answer(result, accept, context, (("transform", clock() - began),))
        if decode is None:
            data = call(self.input_fn, context, codecs.for_handlers(body, content_type), content_type)
        else:
            data = decode(body, self.json_allow_nan)
        decoded = clock()
        if self.batcher is None:
            prediction = self._predict(context, data, model)
        else:  # waits for its batch: the predict phase counts the wait
            prediction = self.batcher.predict(data)
        predicted = clock()
        if self.output_fn is None:
            # A generator is streamed as it is, not encoded whole.
            result: Any = framed(prediction, accept) if is_stream(prediction) else codecs.encode(
                prediction, accept, self.json_allow_nan)
        else:
            result = call(self.output_fn, context, prediction, accept)
        return self._answer(result, accept, context, (("input", decoded - began), ("predict", predicted - decoded),
                                                      ("output", clock() - predicted)))

    def _answer(self, result: Any, accept: str, context: Context, phases: Phases) -> Answer:
        if isinstance(result, bytes):
            return _answer(result, accept, context, phases)
        if is_stream(result):
            stream = result if isinstance(result, Stream) else Stream(result)
            return _answer(stream, stream.content_type or accept, context, phases)
        if hasattr(result, "get_data") and hasattr(result, "status_code"):
            # A Response made by the user: its status, type and headers.
            headers = [(name, value) for name, value in result.headers.items()
                       if name.lower() not in ("content-type", "content-length")]
            body = result.response if result.is_streamed else result.get_data()
            return _answer(body, result.headers.get("Content-Type"), context, phases, result.status_code, headers)
        if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
            body, content_type = result
            if is_stream(body):
                return _answer(body if isinstance(body, Stream) else Stream(body), content_type, context, phases)
            return _answer(self._to_bytes(body, content_type), content_type, context, phases)
        return _answer(self._to_bytes(result, accept), accept, context, phases)

    def _to_bytes(self, value: Any, content_type: str) -> bytes:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, str):
            return value.encode("utf-8")
        if negotiation.media_type(content_type) in codecs.ENCODERS:
            return codecs.encode(value, negotiation.media_type(content_type), self.json_allow_nan)
        raise ServeError(f"the handler returned a {type(value).__name__}, which cannot be sent as "
                         f"{content_type}: return bytes or str")


def _row_counts(inputs: List[Any]) -> Optional[List[int]]:
    """Each input's rows, if all are numpy arrays that stack into one (2-D or more, one row shape)."""
    np = codecs.numpy_module()
    if np is None:
        return None
    shape = None
    for data in inputs:
        if not isinstance(data, np.ndarray) or data.ndim < 2:
            return None
        if shape is None:
            shape = data.shape[1:]
        elif data.shape[1:] != shape:
            return None
    return [len(data) for data in inputs]


def _answer(body: Any, content_type: Optional[str], context: Context, phases: Phases, status: int = 200,
            headers: Optional[List[Tuple[str, str]]] = None) -> Answer:
    """The Answer, with the headers the handler set on `context` replacing any of the same name
    (a Content-Type set there is the answer's type)."""
    if context.response_headers:
        replaced = {name.lower() for name in context.response_headers}
        headers = [(name, value) for name, value in headers or () if name.lower() not in replaced]
        for name, value in context.response_headers.items():
            if name.lower() == "content-type":
                content_type = value
            else:
                headers.append((name, value))
    return Answer(body, content_type, status, headers or (), phases)
