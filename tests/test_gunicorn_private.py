"""The private gunicorn parts smsuper leans on (smsuper/serve/gunicorn_private.py) are there.

The list was checked against one gunicorn release. This fails when pyproject.toml pins another
one (read the list again against the new source, then update VERIFIED_WITH), and when the
gunicorn bundled into the pyz lacks any listed attribute or calls it with other parameters.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from smsuper.serve import gunicorn_private

ROOT = Path(__file__).resolve().parent.parent

# Runs on the pyz alone, as the gunicorn master does: the gunicorn checked is the bundled one.
CHECK = r"""
import importlib, inspect, json, re, sys
sys.path.insert(0, sys.argv[1])
import gunicorn
import gunicorn.config
from smsuper.serve import gunicorn_private as private


def resolve(path):
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(path)


def assigned(name, sources):
    return any(re.search(r"\.%s\s*=" % re.escape(name), source) for source in sources)


problems = []
for owner_path, name, parameters, why in private.RELIED_ON:
    where = f"{owner_path}.{name}"
    try:
        owner = resolve(owner_path)
    except (ImportError, AttributeError) as error:
        problems.append(f"{where}: {owner_path} is gone ({error})")
        continue
    if owner is gunicorn.config.Config:
        owner = gunicorn.config.Config()  # its settings are attributes of an instance
    if hasattr(owner, name):
        if parameters is not None:
            target = getattr(owner, name)
            try:
                names = tuple(p for p in inspect.signature(target).parameters if p != "self")
            except (TypeError, ValueError) as error:
                problems.append(f"{where}: no signature ({error})")
                continue
            if names != tuple(parameters):
                problems.append(f"{where}: takes {names}, the list says {tuple(parameters)}")
        continue
    sources = [inspect.getsource(cls) for cls in getattr(owner, "__mro__", ()) if cls.__module__.startswith("gunicorn")]
    elsewhere = private.ASSIGNED_ELSEWHERE.get((owner_path, name))
    if elsewhere:
        sources.append(inspect.getsource(importlib.import_module(elsewhere)))
    if not assigned(name, sources):
        problems.append(f"{where}: neither an attribute nor assigned anywhere it should be")
print(json.dumps({"version": gunicorn.__version__, "problems": problems}))
"""


def pinned_gunicorn() -> str:
    found = re.search(r'"gunicorn==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert found, "pyproject.toml pins no gunicorn"
    return found.group(1)


def test_the_list_was_checked_against_the_pinned_gunicorn():
    assert pinned_gunicorn() == gunicorn_private.VERIFIED_WITH, (
        f"pyproject.toml pins gunicorn {pinned_gunicorn()}; smsuper/serve/gunicorn_private.py was checked "
        f"against {gunicorn_private.VERIFIED_WITH}: read its list against the new release, then update it")


def test_every_private_part_exists_in_the_bundled_gunicorn(pyz):
    ran = subprocess.run([sys.executable, "-c", CHECK, str(pyz)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    found = json.loads(ran.stdout)
    assert found["version"] == gunicorn_private.VERIFIED_WITH
    assert found["problems"] == []


def test_the_list_names_what_the_code_overrides():
    # Every method the draining arbiter and the keep-alive worker define over gunicorn's is listed.
    from smsuper.serve.master import gunicorn_app
    from smsuper.serve.worker import keepalive_worker

    listed = {(owner.rsplit(".", 1)[-1], name) for owner, name, _, _ in gunicorn_private.RELIED_ON}
    overridden = set()
    for ours, theirs in ((gunicorn_app.DrainingArbiter, "Arbiter"), (keepalive_worker.KeepAliveWorker, "SyncWorker"),
                         (gunicorn_app.JsonLogger, "Logger")):
        base = next(cls for cls in ours.__mro__ if cls.__name__ == theirs)
        for name in vars(ours):
            if callable(getattr(ours, name)) and not name.startswith("__") and any(
                    name in vars(cls) for cls in base.__mro__):
                overridden.add((next(cls.__name__ for cls in base.__mro__ if name in vars(cls)), name))
    assert overridden - listed == set()
