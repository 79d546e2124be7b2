"""The failure reason: what a person needs, inside the 1024 characters shown.

The platform shows only the first 1024 characters of output/failure, so the
summary is built to fit them (counted in UTF-8 bytes, which also bounds the
characters whichever way they are counted):

1. the headline: the final line of the last Python traceback on stderr
   ("ValueError: bad learning rate"), or pip's last "ERROR:" line;
2. the status: exit code, or the signal that ended the program;
3. the tail of stderr, newest last, as many whole lines as fit (a traceback's
   innermost frames are right before its final line, so they come first).

Progress lines rewritten with \\r keep only their last state and terminal
colour codes are dropped, so the budget goes to words. Everything here is
pure: the stderr tail arrives as bytes and leaves as valid UTF-8 text.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

from ..init.supervisor import signal_name

BUDGET = 1024
TAIL_LIMIT = 64 * 1024  # bytes of stderr kept in memory for the failure file
DETAIL_LIMIT = 16 * 1024  # characters of stderr written after the summary

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRACEBACK = "Traceback (most recent call last):"
# A launcher's own traceback hides the real error of the program it ran.
_WRAPPER_EXCEPTIONS = ("ChildFailedError", "CalledProcessError")


class StderrTail:
    """The last `limit` bytes of a stream, fed chunk by chunk (on_stderr)."""

    def __init__(self, limit: int = TAIL_LIMIT):
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        # Trim only when twice over: amortised O(1) per byte, cheap enough to
        # sit on the relay's hot path.
        if len(self._buffer) > 2 * self.limit:
            del self._buffer[: len(self._buffer) - self.limit]

    __call__ = feed

    def data(self) -> bytes:
        return bytes(self._buffer[-self.limit:])


def clean_lines(data: bytes) -> List[str]:
    """stderr bytes -> printable lines: last \\r state, no colours, no blanks."""
    text = data.decode("utf-8", "replace")
    lines = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if "\r" in line:
            line = line.rsplit("\r", 1)[1]
        line = _CONTROL.sub("", _ANSI.sub("", line)).rstrip()
        if line.strip():
            lines.append(line)
    return lines


def _traceback_final_line(lines: Sequence[str], start: int) -> Optional[str]:
    """The exception line ending the traceback that starts at `start`."""
    for line in lines[start + 1:]:
        if line.startswith((" ", "\t")) or line.startswith(_TRACEBACK):
            continue  # frames, source lines, carets
        return line.strip()
    return None


def exception_line(lines: Sequence[str]) -> Optional[str]:
    """The final line of the last traceback; a launcher's wrapper error
    (torchrun's ChildFailedError) gives way to the traceback before it."""
    starts = [index for index, line in enumerate(lines) if line.strip() == _TRACEBACK]
    found: List[str] = []
    for start in starts:
        final = _traceback_final_line(lines, start)
        if final:
            found.append(final)
    for final in reversed(found):
        if not any(wrapper in final.split(":", 1)[0] for wrapper in _WRAPPER_EXCEPTIONS):
            return final
    return found[-1] if found else None


def pip_error_line(lines: Sequence[str]) -> Optional[str]:
    """pip's final "ERROR: ..." line, the reason an install failed."""
    for line in reversed(lines):
        if line.startswith("ERROR:"):
            return line.strip()
    return None


def status_sentence(name: str, code: int, signal_number: Optional[int]) -> str:
    if signal_number:
        return f"{name} was killed by {signal_name(signal_number)} (exit code {code})."
    return f"{name} exited with code {code}."


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def _clip(text: str, budget: int) -> str:
    """At most `budget` UTF-8 bytes of `text`, cut on a character boundary."""
    if _utf8_len(text) <= budget:
        return text
    data = text.encode("utf-8")[: max(0, budget - 3)]
    return data.decode("utf-8", "ignore") + "..."


def compose(headline: Optional[str], status: str, lines: Sequence[str], budget: int = BUDGET) -> str:
    """The summary: headline, status, then the newest stderr lines that fit."""
    head = [part for part in (headline, status) if part]
    summary = _clip("\n".join(head), budget)
    remaining = budget - _utf8_len(summary)
    tail = list(lines)
    if headline and tail and tail[-1].strip() == headline:
        tail.pop()  # already the headline: spend the budget on the frames before it
    label = "\nstderr (last lines):"
    if not tail or remaining <= _utf8_len(label) + 2:
        return summary
    remaining -= _utf8_len(label)
    chosen: List[str] = []
    for line in reversed(tail):
        cost = _utf8_len(line) + 1
        if cost > remaining:
            if not chosen:  # one huge last line: keep its end, which is newest
                chosen.append(_clip(line[::-1], remaining - 1)[::-1])
            break
        chosen.append(line)
        remaining -= cost
    return summary + label + "".join("\n" + line for line in reversed(chosen))


def failure_text(summary: str, lines: Sequence[str], detail_limit: int = DETAIL_LIMIT) -> str:
    """The whole file: the summary, then a longer stderr tail for whoever
    opens the file itself (past the 1024 characters the platform shows)."""
    text = summary.rstrip("\n") + "\n"
    if lines:
        detail = "\n".join(lines)
        if len(detail) > detail_limit:
            detail = "..." + detail[-detail_limit:].split("\n", 1)[-1]
        text += "\n--- stderr, last lines ---\n" + detail + "\n"
    return text
