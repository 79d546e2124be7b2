"""How smsuper starts its own helper processes (selfcmd.py): from the pyz's extracted tree."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys


def test_a_child_smsuper_starts_from_the_extracted_tree_without_going_through_the_zip(pyz, base_env, tmp_path):
    archive = tmp_path / "smsuper.pyz"
    shutil.copy(pyz, archive)
    env = dict(base_env, SMSUPER_CACHE_DIR=str(tmp_path / "cache"), SMSUPER_PYZ=str(archive))
    version = subprocess.run([sys.executable, str(archive), "--version"], env=env, stdout=subprocess.PIPE,
                             check=True, timeout=300).stdout.decode()
    (tree,) = (tmp_path / "cache").iterdir()  # the first start extracted it
    # What the bootstrap does before PID 1 runs: the tree replaces the zip on sys.path.
    code = (f"import sys, json; sys.path[0] = {str(tree)!r}; from smsuper import selfcmd; "
            f"print(json.dumps(selfcmd.self_argv('--version')))")
    argv = json.loads(subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, check=True,
                                     timeout=300).stdout)
    archive.unlink()  # a child that read the zip again could not start now
    # `python -c` puts the working directory first on sys.path: the tree must take its place.
    (tmp_path / "json.py").write_text("raise SystemExit('a json.py in the working directory was imported')\n")
    child = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, cwd=tmp_path)
    assert child.returncode == 0, child.stderr.decode()
    assert child.stdout.decode() == version  # the same build, from the same tree
