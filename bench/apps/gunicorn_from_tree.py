"""Run gunicorn from smsuper's extracted library tree: `python gunicorn_from_tree.py TREE GUNICORN-ARGS...`.

The baselines thus use the very gunicorn and Flask that smsuper.pyz bundles
(same versions, same bytecode), not whatever the machine has installed.
"""
import sys

sys.path.insert(0, sys.argv.pop(1))

from gunicorn.app.wsgiapp import run  # noqa: E402

sys.argv[0] = "gunicorn"
sys.exit(run())
