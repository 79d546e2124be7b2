"""Model names: hostile input that ends up in paths, nginx variables and log lines.

A name is 1 to 128 characters of letters, digits, `.`, `_` and `-`, starting with
a letter or a digit (so never `.` or `..`, never a `/`): the same rule as
multi-model-server's, and what the platform sends (often a hash). nginx routes
with the same expression, so a name it passes on is one PID 1 accepts.
"""

from __future__ import annotations

import re

PATTERN = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_VALID = re.compile(PATTERN + r"\Z")
RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or a digit"


def valid(name: object) -> bool:
    return isinstance(name, str) and _VALID.match(name) is not None
