"""Internal words: children smsuper starts from its own pyz (`python smsuper.pyz _word`).

Each entry maps a word to `module:function`; the function takes the remaining
argv and returns an exit code. Users never type these.
"""

from __future__ import annotations

import importlib
import sys
from typing import List

WORDS = {
    "_gunicorn": "smsuper.serve.master.gunicorn_app:main",
    "_s3-download": "smsuper.usercode.s3_child:main",
}


def main(word: str, args: List[str]) -> int:
    target = WORDS.get(word)
    if target is None:
        print(f"smsuper: unknown internal word {word!r}", file=sys.stderr)
        return 2
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(args) or 0)
