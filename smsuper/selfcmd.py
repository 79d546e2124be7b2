"""How to start another smsuper process from the same code.

Children such as the gunicorn master must run the same bundled libraries as
PID 1, so they are started as `python /smsuper.pyz _word` (or, when smsuper
runs from a source tree, `python -m smsuper _word`).

When PID 1 runs from the pyz's extracted tree (the bootstrap found or made it,
smsuper/_bootstrap.py), the child is started from that tree directly:
`python -c "...sys.path[0] = TREE...; run()" _word ...`. Going through the zip
again would only read its directory and compile its bootstrap to end up in the
same tree: a few milliseconds on the way to the first /ping 200, and the
zip's table held for the life of the gunicorn master. The tree is checked at
each start, so a restart after it vanished goes through the zip again (which
extracts it anew).
"""

from __future__ import annotations

import os
import sys

from . import settings

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import List


def self_argv(word: str, *args: str) -> List[str]:
    main = sys.modules.get("__main__")
    origin = getattr(main, "__file__", "") or ""
    archive = settings.value("SMSUPER_PYZ") or _archive_of(origin)
    if archive:
        tree = extracted_tree()
        if tree:
            return [sys.executable, "-c", FROM_TREE % (tree,), word, *args]
        return [sys.executable, archive, word, *args]
    return [sys.executable, "-m", "smsuper", word, *args]


# sys.path[0] is '' (the working directory) for `python -c`: the tree takes its place, as the
# bootstrap has it take the zip's, so nothing in the working directory shadows a library.
FROM_TREE = "import sys; sys.path[0] = %r; from smsuper.__main__ import run; run()"


def extracted_tree() -> str:
    """The extracted tree this process's smsuper was imported from, or '' (the zip itself, a checkout)."""
    from . import build_id

    package = os.path.dirname(os.path.abspath(__file__))
    tree = os.path.dirname(package)
    if build_id() == "source" or not os.path.basename(tree).startswith(build_id() + "-"):
        return ""
    return tree if os.path.isfile(os.path.join(package, "__main__.py")) else ""


def _archive_of(path: str) -> str:
    """The .pyz that `path` lives in (zip or its extracted copy), or ''."""
    if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]) and not sys.argv[0].endswith(".py"):
        return os.path.abspath(sys.argv[0])
    return ""
