"""Line and column of a value inside a JSON document, for error messages.

`json` reports positions only for syntax errors. When a file is valid JSON of
the wrong shape ("hosts" is a number), the message should still point at the
line to fix, so this walks the (already validated) text down a path of keys
and indexes using the stdlib scanner, without building a second parser.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring
from typing import Sequence, Tuple, Union

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCANNER = json.JSONDecoder().scan_once

Step = Union[str, int]


def line_column(text: str, offset: int) -> Tuple[int, int]:
    """1-based line and column of a character offset, as `json` counts them."""
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return line, column


def _skip(text: str, index: int) -> int:
    return _WHITESPACE.match(text, index).end()


def _skip_value(text: str, index: int) -> int:
    try:
        return _SCANNER(text, index)[1]
    except StopIteration:  # not valid JSON here: callers only pass valid text
        return len(text)


def _member_offset(text: str, index: int, key: str) -> int:
    """Offset of the value of `key` in the object at `index` (its last
    occurrence, as json.loads keeps the last of duplicate keys), or -1."""
    found = -1
    index = _skip(text, index + 1)
    while index < len(text) and text[index] == '"':
        name, index = scanstring(text, index + 1)
        index = _skip(text, index)
        index = _skip(text, index + 1)  # past ':'
        if name == key:
            found = index
        index = _skip(text, _skip_value(text, index))
        if index < len(text) and text[index] == ",":
            index = _skip(text, index + 1)
    return found


def _element_offset(text: str, index: int, position: int) -> int:
    index = _skip(text, index + 1)
    count = 0
    while index < len(text) and text[index] != "]":
        if count == position:
            return index
        index = _skip(text, _skip_value(text, index))
        if index < len(text) and text[index] == ",":
            index = _skip(text, index + 1)
        count += 1
    return -1


def offset_of(text: str, path: Sequence[Step]) -> int:
    """Offset of the value at `path`, or of the deepest part of it that exists."""
    index = _skip(text, 0)
    for step in path:
        if index >= len(text):
            break
        opening = text[index]
        if opening == "{" and isinstance(step, str):
            inner = _member_offset(text, index, step)
        elif opening == "[" and isinstance(step, int):
            inner = _element_offset(text, index, step)
        else:
            inner = -1
        if inner < 0:
            break
        index = inner
    return index


def locate(text: str, path: Sequence[Step]) -> Tuple[int, int]:
    """Line and column of the value at `path` in the JSON `text`."""
    return line_column(text, offset_of(text, path))
