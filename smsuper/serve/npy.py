"""A pure-Python NPY reader and writer, for images without numpy.

Only plain numeric dtypes (bool, signed and unsigned integers, float16/32/64,
either byte order, C or Fortran order) are understood; arrays of Python
objects are refused, because reading them means unpickling, which would let a
request run code. The header is a Python literal, read with
ast.literal_eval (no eval).
"""

from __future__ import annotations

import ast
import struct
from typing import Any, List, Sequence, Tuple

MAGIC = b"\x93NUMPY"

# dtype kind+size -> struct code
_CODES = {
    "b1": "?",
    "i1": "b", "i2": "h", "i4": "i", "i8": "q",
    "u1": "B", "u2": "H", "u4": "I", "u8": "Q",
    "f2": "e", "f4": "f", "f8": "d",
}


class NpyError(ValueError):
    """The bytes are not an NPY array this reader accepts."""


def _header(data: bytes) -> Tuple[dict, int]:
    if not data.startswith(MAGIC) or len(data) < 10:
        raise NpyError("not an NPY file (it must start with \\x93NUMPY)")
    major = data[6]
    if major == 1:
        (length,), start = struct.unpack_from("<H", data, 8), 10
    elif major in (2, 3):
        if len(data) < 12:
            raise NpyError("truncated NPY header")
        (length,), start = struct.unpack_from("<I", data, 8), 12
    else:
        raise NpyError(f"unsupported NPY format version {major}")
    text = data[start:start + length].decode("latin1" if major < 3 else "utf-8")
    try:
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise NpyError("unreadable NPY header") from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise NpyError("NPY header lacks descr, fortran_order or shape")
    return header, start + length


def _struct_format(descr: Any) -> str:
    if isinstance(descr, str) and descr[1:] == "O":
        raise NpyError("NPY arrays of Python objects are refused: reading them would unpickle")
    if not isinstance(descr, str) or len(descr) < 3:
        raise NpyError(f"unsupported NPY dtype {descr!r}: only plain numbers and booleans")
    order, kind = descr[0], descr[1:]
    if order not in "<>|=" or kind not in _CODES:
        raise NpyError(f"unsupported NPY dtype {descr!r}: only plain numbers and booleans")
    return (">" if order == ">" else "<") + _CODES[kind]


def _nest(flat: Sequence[Any], shape: Sequence[int], fortran: bool) -> Any:
    if not shape:
        return flat[0]
    strides = []
    step = 1
    dims = list(shape) if fortran else list(reversed(shape))
    for size in dims:
        strides.append(step)
        step *= size
    if not fortran:
        strides.reverse()

    def build(axis: int, offset: int) -> List[Any]:
        if axis == len(shape) - 1:
            return [flat[offset + i * strides[axis]] for i in range(shape[axis])]
        return [build(axis + 1, offset + i * strides[axis]) for i in range(shape[axis])]

    return build(0, 0)


def read(data: bytes) -> Any:
    """NPY bytes -> nested lists (a scalar for a 0-d array)."""
    header, offset = _header(data)
    fmt = _struct_format(header["descr"])
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise NpyError(f"bad NPY shape {shape!r}")
    count = 1
    for size in shape:
        count *= size
    width = struct.calcsize(fmt)
    if len(data) - offset < count * width:
        raise NpyError(f"NPY data is truncated: shape {shape} needs {count * width} bytes")
    flat = struct.unpack_from(f"{fmt[0]}{count}{fmt[1]}", data, offset)
    return _nest(flat, shape, bool(header["fortran_order"]))


def _shape_and_flat(value: Any) -> Tuple[Tuple[int, ...], List[Any]]:
    if not isinstance(value, (list, tuple)):
        return (), [value]
    if not value:
        return (0,), []
    parts = [_shape_and_flat(item) for item in value]
    inner = parts[0][0]
    if any(shape != inner for shape, _ in parts):
        raise NpyError("cannot write a ragged nested list as NPY: every row must have the same shape")
    flat = [item for _, items in parts for item in items]
    return (len(value),) + inner, flat


def write(value: Any) -> bytes:
    """Nested lists of bools, ints or floats -> NPY bytes (version 1.0, C order)."""
    shape, flat = _shape_and_flat(value)
    if all(isinstance(x, bool) for x in flat) and flat:
        descr, code = "|b1", "?"
    elif all(isinstance(x, int) and not isinstance(x, bool) for x in flat) and \
            all(-(2 ** 63) <= x < 2 ** 63 for x in flat):
        descr, code = "<i8", "q"
    elif all(isinstance(x, (int, float)) for x in flat):
        descr, code = "<f8", "d"
        flat = [float(x) for x in flat]
    else:
        raise NpyError("cannot write as NPY: only numbers and booleans (numpy is not installed)")
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    # Pad so the data starts on a 64-byte boundary, as numpy writes it.
    total = len(MAGIC) + 2 + 2 + len(header) + 1
    header += " " * ((64 - total % 64) % 64) + "\n"
    encoded = header.encode("latin1")
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(encoded)) + encoded + \
        struct.pack(f"<{len(flat)}{code}", *flat)
