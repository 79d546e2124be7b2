"""Prometheus' text exposition format (version 0.0.4), written by hand.

PID 1 renders every scrape itself instead of importing prometheus_client:
that package's __init__ pulls in http.server, urllib and wsgiref and costs
PID 1 about 10 MB of RSS, half the 20 MB it may use. What PID 1 exports is a
handful of gauges and counters, so a family is just a name, a type, a help
text and its samples.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Iterable, List, Tuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "smsuper_"


def number(value: float) -> str:
    """A sample value as Prometheus parses it (+Inf, -Inf, NaN; integers without '.0')."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def labels_text(labels: Iterable[Tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{_label_value(str(value))}"' for name, value in labels)
    return "{" + inner + "}" if inner else ""


class Family:
    """One metric: its samples are (suffix, labels as (name, value) pairs, value)."""

    __slots__ = ("name", "kind", "help", "samples")

    def __init__(self, name: str, kind: str, help_text: str):
        self.name = name
        self.kind = kind  # counter, gauge, histogram, summary, untyped
        self.help = help_text
        self.samples: List[Tuple[str, Tuple[Tuple[str, str], ...], float]] = []

    def add(self, value: float, suffix: str = "", **labels: str) -> "Family":
        self.samples.append((suffix, tuple(labels.items()), value))
        return self

    def add_labels(self, value: float, labels: Iterable[Tuple[str, str]], suffix: str = "") -> "Family":
        self.samples.append((suffix, tuple(labels), value))
        return self

    def render(self, out: List[str]) -> None:
        out.append(f"# HELP {self.name} {_help(self.help)}\n")
        out.append(f"# TYPE {self.name} {self.kind}\n")
        for suffix, labels, value in self.samples:
            out.append(f"{self.name}{suffix}{labels_text(labels)} {number(value)}\n")


def gauge(name: str, help_text: str) -> Family:
    return Family(PREFIX + name, "gauge", help_text)


def counter(name: str, help_text: str) -> Family:
    """In the 0.0.4 text format a counter's TYPE line names it with its _total,
    as prometheus_client writes it; `name` comes without."""
    return Family(PREFIX + name + "_total", "counter", help_text)


def render(families: Iterable[Family]) -> bytes:
    out: List[str] = []
    for family in families:
        if family.samples:
            family.render(out)
    return "".join(out).encode("utf-8")
