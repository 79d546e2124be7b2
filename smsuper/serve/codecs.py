"""The default input_fn and output_fn: JSON, CSV and NPY, in and out.

Decoding gives numpy arrays when numpy is importable and the data is a
rectangular block of numbers (or booleans); otherwise plain Python lists:
- application/json: the parsed value; a numeric list becomes an array,
  anything else (objects, strings, ragged lists) stays as parsed.
- text/csv: always 2-D (one row per line); an array of float64 when every
  cell is a number, else a list of rows whose numeric cells are floats.
- application/x-npy: the array, read WITHOUT pickle (allow_pickle=False, or
  the pure-Python reader in npy.py when numpy is absent).

Encoding takes arrays, numpy scalars and nested lists:
- application/json: compact JSON, arrays as nested lists.
- text/csv: a 2-D value writes one line per row, a 1-D value one line per
  element (one prediction per line, as batch transform expects), a scalar
  one line.
- application/x-npy: NPY bytes, never pickled.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Callable, Dict, List, Optional

from . import npy
from .errors import BadRequest, ServeError, UnsupportedContentType

JSON = "application/json"
CSV = "text/csv"
NPY = "application/x-npy"

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


# ---- decoding ------------------------------------------------------------------

def _numeric_array(value: Any) -> Any:
    """An ndarray when numpy can hold `value` as a block of numbers, else `value`."""
    np = numpy_module()
    if np is None or not isinstance(value, list):
        return value
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        return value  # ragged
    return array if array.dtype.kind in "biuf" else value


def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise BadRequest("the request body is empty; expected JSON")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from None
    return _numeric_array(value)


def _cell(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


def decode_csv(body: bytes) -> Any:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadRequest(f"the CSV body is not UTF-8: {error}") from None
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


def decode_npy(body: bytes) -> Any:
    np = numpy_module()
    if not body.startswith(npy.MAGIC):
        raise BadRequest("the request body is not NPY (it must start with \\x93NUMPY)")
    if np is None:
        try:
            return npy.read(body)
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


DECODERS: Dict[str, Callable[[bytes], Any]] = {JSON: decode_json, CSV: decode_csv, NPY: decode_npy}


def decode(body: bytes, content_type: str) -> Any:
    decoder = DECODERS.get(content_type)
    if decoder is None:
        shown = content_type or "(none)"
        raise UnsupportedContentType(
            f"unsupported content type {shown}: the default input_fn reads {', '.join(DECODERS)}")
    return decoder(body)


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


def encode_json(prediction: Any) -> bytes:
    return json.dumps(_plain(prediction), default=_json_default, separators=(",", ":")).encode("utf-8")


def _csv_rows(value: Any) -> List[List[Any]]:
    value = _plain(value)
    if not isinstance(value, (list, tuple)):
        return [[value]]
    rows = []
    for item in value:
        item = _plain(item)
        if isinstance(item, (list, tuple)):
            if any(isinstance(_plain(cell), (list, tuple, dict)) for cell in item):
                raise ServeError("cannot write the prediction as CSV: it has more than two dimensions")
            rows.append([_plain(cell) for cell in item])
        elif isinstance(item, dict):
            raise ServeError("cannot write the prediction as CSV: it holds objects; use JSON")
        else:
            rows.append([item])
    return rows


def encode_csv(prediction: Any) -> bytes:
    if isinstance(prediction, dict):
        raise ServeError("cannot write the prediction as CSV: it is an object; use JSON")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(_csv_rows(prediction))
    return out.getvalue().encode("utf-8")


def encode_npy(prediction: Any) -> bytes:
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
    if array.dtype.hasobject:
        raise ServeError("cannot write the prediction as NPY: it holds Python objects (would need pickle)")
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


ENCODERS: Dict[str, Callable[[Any], bytes]] = {JSON: encode_json, CSV: encode_csv, NPY: encode_npy}


def encode(prediction: Any, accept: str) -> bytes:
    encoder: Optional[Callable[[Any], bytes]] = ENCODERS.get(accept)
    if encoder is None:
        raise ServeError(f"the default output_fn cannot write {accept}: it writes {', '.join(ENCODERS)}")
    try:
        return encoder(prediction)
    except ServeError:
        raise
    except (TypeError, ValueError) as error:
        raise ServeError(f"cannot write the prediction as {accept}: {error}") from None
