"""A pure-Python NPY reader and writer, for images without numpy; and the size
check both readers make before they believe a header.

Only plain dtypes (bool, signed and unsigned integers, float16/32/64, unicode
strings, either byte order, C or Fortran order) are understood; arrays of
Python objects are refused, because reading them means unpickling, which would
let a request run code. The header is a Python literal, read with
ast.literal_eval (no eval).

A header is only a claim: 128 bytes can claim a shape of 10**12 elements, or
10**9 empty rows. `check_claims` refuses a shape the body cannot justify
before anything is allocated, so that a request never buys more work than its
size: the elements must fit in the data, and no dimension product (the rows a
reader would build) may exceed the body's length in bytes.
"""

from __future__ import annotations

import ast
import struct
from typing import Any, List, Sequence, Tuple

MAGIC = b"\x93NUMPY"
MAX_DIMENSIONS = 64  # numpy's own limit (NPY_MAXDIMS)
MAX_HEADER_BYTES = 10000  # numpy's default max_header_size: longer headers need allow_pickle there too

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
    if length > MAX_HEADER_BYTES:
        raise NpyError(f"the NPY header is {length} bytes long; at most {MAX_HEADER_BYTES} are read (as numpy does)")
    if len(data) < start + length:
        raise NpyError("truncated NPY header")
    try:
        text = data[start:start + length].decode("latin1" if major < 3 else "utf-8")
        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise NpyError("unreadable NPY header") from None
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise NpyError("NPY header lacks descr, fortran_order or shape")
    return header, start + length


def header(data: bytes) -> Tuple[dict, int]:
    """(the header dict, the offset of the data); NpyError when it is not one."""
    return _header(data)


def check_claims(shape: Any, itemsize: int, data: bytes, offset: int) -> int:
    """The element count of `shape`, or NpyError when the body cannot justify the shape."""
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise NpyError(f"bad NPY shape {shape!r}")
    if len(shape) > MAX_DIMENSIONS:
        raise NpyError(f"the NPY shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS} are allowed")
    count = 1
    for size in shape:
        count *= size
        if count > len(data):
            raise NpyError(f"the NPY header claims shape {shape!r}, more rows or elements than the "
                           f"{len(data)} bytes of the body can hold: refused before reading")
    needed = count * itemsize
    if needed > len(data) - offset:
        raise NpyError(f"the NPY header claims shape {shape!r} of {itemsize}-byte items ({needed} bytes of "
                       f"data), but the body of {len(data)} bytes holds {len(data) - offset}: refused before reading")
    return count


def _item(descr: Any) -> Tuple[str, int]:
    """(struct format or 'U' for unicode, item size in bytes) of a plain dtype."""
    if isinstance(descr, str) and descr[1:] == "O":
        raise NpyError("NPY arrays of Python objects are refused: reading them would unpickle")
    if not isinstance(descr, str) or len(descr) < 3:
        raise NpyError(f"unsupported NPY dtype {descr!r}: only plain numbers, booleans and strings")
    order, kind = descr[0], descr[1:]
    if order in "<>|=" and kind[0] == "U" and kind[1:].isdigit():
        return ("<U" if order != ">" else ">U"), 4 * int(kind[1:])
    if order not in "<>|=" or kind not in _CODES:
        raise NpyError(f"unsupported NPY dtype {descr!r}: only plain numbers, booleans and strings")
    fmt = (">" if order == ">" else "<") + _CODES[kind]
    return fmt, struct.calcsize(fmt)


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


def _strings(data: bytes, offset: int, count: int, width: int, big_endian: bool) -> List[str]:
    codec = "utf-32-be" if big_endian else "utf-32-le"
    try:
        return [data[offset + i * width:offset + (i + 1) * width].decode(codec).rstrip("\0")
                for i in range(count)]
    except UnicodeDecodeError:
        raise NpyError("the NPY strings are not valid UTF-32") from None


def read(data: bytes) -> Any:
    """NPY bytes -> nested lists (a scalar for a 0-d array)."""
    header, offset = _header(data)
    fmt, width = _item(header["descr"])
    shape = header["shape"]
    count = check_claims(shape, width, data, offset)
    if fmt[1] == "U":
        flat: Sequence[Any] = _strings(data, offset, count, width, fmt[0] == ">")
    else:
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
    """Nested lists of bools, ints, floats or strs -> NPY bytes (version 1.0, C order).

    Strings become numpy's '<U' of the longest one, as numpy.array(list_of_str) would
    make them: no pickle, so numpy reads them with allow_pickle=False.
    """
    shape, flat = _shape_and_flat(value)
    if all(isinstance(x, bool) for x in flat) and flat:
        descr, data = "|b1", struct.pack(f"<{len(flat)}?", *flat)
    elif all(isinstance(x, int) and not isinstance(x, bool) for x in flat) and \
            all(-(2 ** 63) <= x < 2 ** 63 for x in flat):
        descr, data = "<i8", struct.pack(f"<{len(flat)}q", *flat)
    elif all(isinstance(x, (int, float)) for x in flat):
        descr, data = "<f8", struct.pack(f"<{len(flat)}d", *[float(x) for x in flat])
    elif all(isinstance(x, str) for x in flat):
        width = max(1, max(len(x) for x in flat))
        descr = f"<U{width}"
        data = b"".join(x.encode("utf-32-le", "surrogatepass").ljust(4 * width, b"\0") for x in flat)
    else:
        raise NpyError("cannot write as NPY: only numbers, booleans or strings, never objects that "
                       "only pickle could carry")
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    # Pad so the data starts on a 64-byte boundary, as numpy writes it.
    total = len(MAGIC) + 2 + 2 + len(header) + 1
    header += " " * ((64 - total % 64) % 64) + "\n"
    encoded = header.encode("latin1")
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(encoded)) + encoded + data
