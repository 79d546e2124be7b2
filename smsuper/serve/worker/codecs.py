"""The default input_fn and output_fn: JSON, JSON lines, CSV and NPY, in and out.

Decoding gives numpy arrays when numpy is importable and the data is a
rectangular block of numbers (or booleans); otherwise plain Python lists:
- application/json: the parsed value; a numeric list becomes an array,
  anything else (objects, strings, ragged lists) stays as parsed.
- application/jsonlines: one JSON value per line, as a list (a numeric list
  of lists becomes an array, as for JSON); blank lines are skipped.
- text/csv: always 2-D (one row per line); an array of float64 when every
  cell is a number, else a list of rows whose numeric cells are floats.
- application/x-npy: the array, read WITHOUT pickle (allow_pickle=False, or
  the pure-Python reader in npy.py when numpy is absent), and only after the
  header's shape was checked against the body's size (npy.check_claims).

JSON is standard JSON (RFC 8259) both ways unless the service opts in to
Python's dialect (SMSUPER_JSON_ALLOW_NAN): NaN, Infinity and -Infinity in a
body are a 400 naming the value, and in a prediction they are written as null.
Nesting deeper than the interpreter can parse is a 400 too.

Encoding takes arrays, numpy scalars and nested lists:
- application/json: compact JSON, arrays as nested lists.
- application/jsonlines: one compact JSON value per line: each element of a
  list or array (each row of a 2-D one); a dict or scalar is one line.
- text/csv: a 2-D value writes one line per row, a 1-D value one line per
  element (one prediction per line, as batch transform expects), a scalar
  one line. Each float at its own precision: a float32 0.3 is `0.3`, as the
  official toolkits print it, not its float64 expansion.
- application/x-npy: NPY bytes, never pickled. Object arrays whose items are
  all strings (a classifier's labels), all booleans or all numbers are
  written as the plain dtype they fit; other objects are refused.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import sys
from typing import Any, Callable, Dict, List, Optional, Union

from . import npy
from .errors import BadRequest, ServeError, UnsupportedContentType

JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
NPY = "application/x-npy"

# The types the official toolkits decode as UTF-8 before the user's input_fn or
# transform_fn sees them (their content_types.UTF8_TYPES); every other body stays bytes.
TEXT_FOR_HANDLERS = (JSON, CSV)

Body = Union[bytes, str]

_numpy: Any = None  # None: not looked up yet; False: not installed


def numpy_module() -> Any:
    """numpy, or None when the image has none. Imported on first use, once."""
    global _numpy
    if _numpy is None:
        try:
            import numpy

            _numpy = numpy
        except ImportError:
            _numpy = False
    return _numpy or None


def for_handlers(body: bytes, content_type: str) -> Body:
    """The body as the toolkits hand it to input_fn / transform_fn: str for JSON and CSV."""
    if content_type not in TEXT_FOR_HANDLERS:
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the {content_type} body is not UTF-8: {error}") from None


# ---- decoding ------------------------------------------------------------------

def _numeric_array(value: Any) -> Any:
    """An ndarray when numpy can hold `value` as a block of numbers, else `value`."""
    np = numpy_module()
    if np is None or not isinstance(value, list):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        return value  # ragged, or deeper than numpy's dimensions
    return array if array.dtype.kind in "biuf" else value


def _refuse_constant(name: str) -> Any:
    raise BadRequest(f"the JSON body holds {name}, which standard JSON does not allow: send null (or a "
                     f"string) instead, or set SMSUPER_JSON_ALLOW_NAN=true to read Python's NaN and Infinity")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_PYTHON_DECODER = json.JSONDecoder()


def _text(body: Body, what: str) -> str:
    if isinstance(body, str):
        return body
    try:
        # As json.loads does for bytes: UTF-8 (with or without a BOM), or UTF-16/32 by their BOM.
        return body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError as error:
        raise BadRequest(f"{what} is not valid JSON: {error}") from None


def _parse(text: str, allow_nan: bool, what: str) -> Any:
    decoder = _PYTHON_DECODER if allow_nan else _STRICT_DECODER
    try:
        return decoder.decode(text)
    except RecursionError:
        raise BadRequest(f"{what} nests arrays or objects deeper than this server parses "
                         f"(about {sys.getrecursionlimit()} levels)") from None
    except ValueError as error:
        raise BadRequest(f"{what} is not valid JSON: {error}") from None


def decode_json(body: Body, allow_nan: bool = False) -> Any:
    text = _text(body, "the request body")
    if not text.strip():
        raise BadRequest("the request body is empty; expected JSON")
    return _numeric_array(_parse(text, allow_nan, "the request body"))


def decode_jsonlines(body: Body, allow_nan: bool = False) -> Any:
    text = _text(body, "the request body")
    values = []
    # Split on \n only: str.splitlines would also split on U+2028, which JSON strings may hold.
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            values.append(_parse(line, allow_nan, f"line {number} of the JSON lines body"))
    if not values:
        raise BadRequest("the request body is empty; expected JSON lines (one JSON value per line)")
    return _numeric_array(values)


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def decode_csv(body: Body, allow_nan: bool = False) -> Any:
    if isinstance(body, str):
        text = body[1:] if body.startswith("\ufeff") else body
    else:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise BadRequest(f"the CSV body is not UTF-8: {error}") from None
    rows = _numeric_rows(text)
    if rows is not None:
        np = numpy_module()
        return np.asarray(rows, dtype=np.float64) if np is not None else rows
    return _csv_rows_read(text)


def _numeric_rows(text: str) -> Optional[List[List[float]]]:
    """The rows of a body of plain numbers, split at commas and newlines: what csv.reader and
    _cell make of it, at a third of the cost. None for anything else (quotes, carriage returns,
    a cell that is no number, rows of different widths, the empty body, a line longer than csv's
    field limit): csv.reader reads those, and says what is wrong."""
    if '"' in text or "\r" in text:
        return None
    lines = text.split("\n")
    limit = csv.field_size_limit()
    if len(text) > limit and any(len(line) > limit for line in lines):
        return None
    try:
        # float() ignores the whitespace str.strip() removes; "" and "a" raise ValueError.
        rows = [[float(cell) for cell in line.split(",")] for line in lines if line]
    except ValueError:
        return None
    if not rows:
        return None
    width = len(rows[0])
    for row in rows:
        if len(row) != width:
            return None
    return rows


def _csv_rows_read(text: str) -> Any:
    try:
        rows = [[_cell(cell.strip()) for cell in row] for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as error:
        raise BadRequest(f"the request body is not valid CSV: {error}") from None
    if not rows:
        raise BadRequest("the request body is empty; expected CSV rows")
    width = len(rows[0])
    for number, row in enumerate(rows, 1):
        if len(row) != width:
            raise BadRequest(f"CSV row {number} has {len(row)} fields but row 1 has {width}")
    np = numpy_module()
    if np is not None and all(isinstance(cell, float) for row in rows for cell in row):
        return np.asarray(rows, dtype=np.float64)
    return rows


def _checked_npy_header(np: Any, body: bytes) -> None:
    """Refuse, before numpy allocates anything, a header the body cannot justify."""
    header, offset = npy.header(body)
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError, KeyError, IndexError) as error:
        raise npy.NpyError(f"unsupported NPY dtype {header['descr']!r}: {error}") from None
    if dtype.hasobject:
        raise npy.NpyError("NPY arrays of Python objects are refused: reading them would unpickle")
    npy.check_claims(header["shape"], dtype.itemsize, body, offset)


def decode_npy(body: bytes, allow_nan: bool = False) -> Any:
    np = numpy_module()
    if not isinstance(body, bytes) or not body.startswith(npy.MAGIC):
        raise BadRequest("the request body is not NPY (it must start with \\x93NUMPY)")
    try:
        if np is None:
            return npy.read(body)
        _checked_npy_header(np, body)
    except npy.NpyError as error:
        raise BadRequest(str(error)) from None
    try:
        return np.load(io.BytesIO(body), allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error) or "Object arrays" in str(error):
            raise BadRequest("NPY arrays of Python objects are refused: reading them would unpickle") from None
        raise BadRequest(f"the request body is not a readable NPY array: {error}") from None
    except (OSError, EOFError) as error:
        raise BadRequest(f"the request body is not a readable NPY array: {error}") from None


DECODERS: Dict[str, Callable[..., Any]] = {JSON: decode_json, CSV: decode_csv, NPY: decode_npy,
                                           JSONLINES: decode_jsonlines}


def decoder(content_type: str) -> Callable[..., Any]:
    """The default input_fn's decoder of `content_type`, or UnsupportedContentType (415)."""
    found = DECODERS.get(content_type)
    if found is None:
        shown = content_type or "(none)"
        raise UnsupportedContentType(
            f"unsupported content type {shown}: the default input_fn reads {', '.join(DECODERS)}")
    return found


def decode(body: Body, content_type: str, allow_nan: bool = False) -> Any:
    return decoder(content_type)(body, allow_nan)


# ---- encoding ------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """numpy arrays and scalars -> Python lists and numbers (anything else unchanged)."""
    if isinstance(value, (list, tuple, dict, str, bytes, int, float)) or value is None:
        return value
    tolist = getattr(value, "tolist", None)  # numpy, torch, pandas...
    return tolist() if callable(tolist) else value


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is not value:
        return plain
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_STRICT_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default, allow_nan=False)
_PYTHON_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_json_default)


def _finite(value: Any) -> Any:
    """`value` with every NaN and infinity replaced by None (JSON's null)."""
    value = _plain(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_finite(item) for item in value]
    return value


def _json_text(prediction: Any, allow_nan: bool) -> str:
    value = _plain(prediction)
    if allow_nan:
        return _PYTHON_ENCODER.encode(value)
    try:
        return _STRICT_ENCODER.encode(value)
    except ValueError as error:
        if "Out of range float" not in str(error):
            raise
    # Rare: a NaN or infinity somewhere. Walk the value only then.
    return _STRICT_ENCODER.encode(_finite(value))


def encode_json(prediction: Any, allow_nan: bool = False) -> bytes:
    return _json_text(prediction, allow_nan).encode("utf-8")


def encode_jsonlines(prediction: Any, allow_nan: bool = False) -> bytes:
    value = _plain(prediction)
    records = value if isinstance(value, (list, tuple)) else [value]
    return "".join(_json_text(record, allow_nan) + "\n" for record in records).encode("utf-8")


def _short_floats(value: Any) -> Any:
    """Arrays of float16/float32 (numpy, or anything numpy can view, like a CPU torch
    tensor) as nested lists of their shortest round-trip text; anything else unchanged.

    tolist() would widen them to Python floats and print 0.30000001192092896 for 0.3.
    """
    np = numpy_module()
    if np is None or isinstance(value, (list, tuple, dict, str, bytes, int, float)) or value is None:
        return value
    if not (hasattr(value, "__array__") or isinstance(value, np.generic)):
        return value
    try:
        array = np.asarray(value)
    except Exception:  # a tensor on a GPU or one that requires grad: its own tolist() it is
        return value
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        return array.astype(str).tolist()
    return value


def _csv_cell(value: Any) -> Any:
    value = _short_floats(value)
    return _plain(value)


def _csv_rows(value: Any) -> List[List[Any]]:
    value = _plain(_short_floats(value))
    if not isinstance(value, (list, tuple)):
        return [[value]]
    rows = []
    for item in value:
        item = _csv_cell(item)
        if isinstance(item, (list, tuple)):
            row = [_csv_cell(cell) for cell in item]
            if any(isinstance(cell, (list, tuple, dict)) for cell in row):
                raise ServeError("cannot write the prediction as CSV: it has more than two dimensions")
            rows.append(row)
        elif isinstance(item, dict):
            raise ServeError("cannot write the prediction as CSV: it holds objects; use JSON")
        else:
            rows.append([item])
    return rows


def encode_csv(prediction: Any, allow_nan: bool = False) -> bytes:
    if isinstance(prediction, dict):
        raise ServeError("cannot write the prediction as CSV: it is an object; use JSON")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(_csv_rows(prediction))
    return out.getvalue().encode("utf-8")


def _without_objects(np: Any, array: Any) -> Any:
    """An object array as the plain dtype its items share, or ServeError when they share none."""
    items = array.ravel().tolist()
    if not items:
        return array.astype(np.float64)
    if all(isinstance(item, str) for item in items):
        return np.array(items, dtype=str).reshape(array.shape)  # '<U' of the longest
    if all(isinstance(item, (bool, np.bool_)) for item in items):
        return array.astype(np.bool_)
    if not any(isinstance(item, (bool, np.bool_)) for item in items):
        if all(isinstance(item, numbers.Integral) for item in items):
            try:
                return np.array(items, dtype=np.int64).reshape(array.shape)
            except OverflowError:
                pass  # beyond int64: float64 keeps them approximately, as numpy would
        if all(isinstance(item, numbers.Real) for item in items):
            return np.array(items, dtype=np.float64).reshape(array.shape)
    kinds = sorted({type(item).__name__ for item in items})
    raise ServeError(f"cannot write the prediction as NPY: it holds Python objects ({', '.join(kinds[:5])}) "
                     f"that only pickle could carry; return numbers, booleans or strings of one kind")


def encode_npy(prediction: Any, allow_nan: bool = False) -> bytes:
    np = numpy_module()
    if np is None:
        try:
            return npy.write(_plain(prediction))
        except npy.NpyError as error:
            raise ServeError(str(error)) from None
    try:
        array = np.asarray(prediction)
    except (ValueError, TypeError) as error:
        raise ServeError(f"cannot write the prediction as NPY: {error}") from None
    if array.dtype == object:
        array = _without_objects(np, array)
    elif array.dtype.hasobject:
        raise ServeError("cannot write the prediction as NPY: it holds Python objects (would need pickle)")
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


ENCODERS: Dict[str, Callable[..., bytes]] = {JSON: encode_json, CSV: encode_csv, NPY: encode_npy,
                                             JSONLINES: encode_jsonlines}


def encode(prediction: Any, accept: str, allow_nan: bool = False) -> bytes:
    encoder: Optional[Callable[..., bytes]] = ENCODERS.get(accept)
    if encoder is None:
        raise ServeError(f"the default output_fn cannot write {accept}: it writes {', '.join(ENCODERS)}")
    try:
        return encoder(prediction, allow_nan)
    except ServeError:
        raise
    except RecursionError:
        raise ServeError(f"cannot write the prediction as {accept}: it nests too deeply") from None
    except (TypeError, ValueError) as error:
        raise ServeError(f"cannot write the prediction as {accept}: {error}") from None
