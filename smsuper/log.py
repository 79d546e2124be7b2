"""smsuper's own messages: one whole line per message on stderr.

Every message is written with a single os.write so it can never be split by,
or glued to, a child's output that shares the same stderr. Text lines carry
the prefix `smsuper: LEVEL:`; with SMSUPER_LOG_FORMAT=json each line is an
object with time, source, level and message.
"""

from __future__ import annotations

import json
import os
import sys
import time
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Optional

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
PREFIX = "smsuper"

_threshold = LEVELS["info"]
_json = False
_source = PREFIX


def configure(level: str = "info", fmt: str = "text", source: Optional[str] = None) -> None:
    """Set the level and format; called once the settings have been read."""
    global _threshold, _json, _source
    _threshold = LEVELS.get(level, LEVELS["info"])
    _json = fmt == "json"
    if source:
        _source = source


def json_line(source: str, level: str, message: str) -> str:
    """The JSON form shared by smsuper's messages and relayed access-log lines."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % int((now % 1) * 1000)
    return json.dumps({"time": stamp, "source": source, "level": level, "message": message},
                      ensure_ascii=False)


def format_line(level: str, message: str) -> str:
    if _json:
        return json_line(_source, level, message) + "\n"
    # Multi-line messages stay one write but each line keeps the prefix, so a
    # reader grepping for "smsuper:" sees all of it.
    head = f"{_source}: {level.upper()}: "
    return "".join(head + part + "\n" for part in message.splitlines() or [""])


def enabled(level: str) -> bool:
    """Whether a message of `level` would be written (skip building costly ones)."""
    return LEVELS[level] >= _threshold


def emit(level: str, message: str) -> None:
    if LEVELS[level] < _threshold:
        return
    data = format_line(level, message).encode("utf-8", "replace")
    try:
        sys.stderr.flush()
    except Exception:
        pass
    while data:
        try:
            written = os.write(2, data)
        except InterruptedError:
            continue
        except OSError:
            return  # stderr gone: nothing useful left to do with the message
        data = data[written:]


def debug(message: str) -> None:
    emit("debug", message)


def info(message: str) -> None:
    emit("info", message)


def warning(message: str) -> None:
    emit("warning", message)


def error(message: str) -> None:
    emit("error", message)
