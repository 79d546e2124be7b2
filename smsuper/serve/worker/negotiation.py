"""Content-Type and Accept: media types compared without their parameters.

`text/csv; charset=utf-8` is `text/csv`; case does not matter. Accept may
list several types with q-values (RFC 9110): the highest q wins, a more
specific range beats a wildcard at equal q, then the client's order; q=0
means "never". `*/*` (or no Accept at all) means the configured default.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple


def media_type(header: Optional[str]) -> str:
    """`Text/CSV; charset=utf-8` -> `text/csv`; '' when absent."""
    if not header:
        return ""
    return header.split(";", 1)[0].strip().lower()


def _quality(parameters: Sequence[str]) -> float:
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(1.0, max(0.0, float(value.strip())))
            except ValueError:
                return 0.0  # an unreadable q is treated as "not acceptable"
    return 1.0


def parse_accept(header: Optional[str]) -> List[Tuple[str, float]]:
    """The acceptable ranges, best first; q=0 entries are dropped."""
    entries = []
    for position, item in enumerate((header or "").split(",")):
        parts = item.split(";")
        kind = parts[0].strip().lower()
        if not kind:
            continue
        if "/" not in kind:
            kind = "*/*" if kind == "*" else kind + "/*"
        q = _quality(parts[1:])
        if q <= 0:
            continue
        specificity = 0 if kind == "*/*" else 1 if kind.endswith("/*") else 2
        entries.append((-q, -specificity, position, kind, q))
    entries.sort()
    return [(kind, q) for _, _, _, kind, q in entries]


def _matches(pattern: str, concrete: str) -> bool:
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return concrete.split("/", 1)[0] == pattern[:-2]
    return pattern == concrete


def choose(accept_header: Optional[str], default: str, supported: Optional[Sequence[str]]) -> Optional[str]:
    """The response type to produce, or None when nothing acceptable is supported.

    `supported` None means user code encodes the answer and decides for
    itself: the client's best concrete type is passed on as it is.
    """
    default = media_type(default) or "application/json"
    ranges = parse_accept(accept_header)
    if not (accept_header or "").strip():
        ranges = [("*/*", 1.0)]
    for pattern, _ in ranges:
        if supported is None:
            if "*" not in pattern:
                return pattern
            if _matches(pattern, default):
                return default
            continue
        if _matches(pattern, default) and default in supported:
            return default
        for candidate in supported:
            if _matches(pattern, candidate):
                return candidate
    if supported is None:
        # Only wildcards that exclude the default (`text/*`): let the user code see them.
        return ranges[0][0] if ranges else None
    return None
