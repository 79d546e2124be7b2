"""The single-file build and its runtime bootstrap, tested on the built pyz.

Covers: byte-identical rebuilds, the zip's layout (directory entries, modes,
one setproctitle extension per Python and platform), the cache tree (bytecode
compiled once, the right extension, precedence over site-packages), the
fallback when no cache is usable, concurrent first starts, and process titles.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]  # builds the pyz again and again, on every Python

ROOT = Path(__file__).resolve().parent.parent
PYENV = Path("/root/.pyenv/versions")
SUPPORTED = [(3, minor) for minor in range(9, 15)]
TARGETS = [(machine, libc) for machine in ("x86_64", "aarch64") for libc in ("gnu", "musl")]


def _pyenv_pythons():
    found = []
    for directory in sorted(PYENV.glob("3.*")) if PYENV.is_dir() else []:
        match = re.fullmatch(r"3\.(\d+)\.\d+", directory.name)
        python = directory / "bin" / "python"
        if match and python.exists() and (3, int(match[1])) in SUPPORTED:
            found.append(pytest.param(python, id=directory.name))
    return found or [pytest.param(Path(sys.executable), id="current")]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(output: Path, python: str = sys.executable, **env: str) -> None:
    subprocess.run([python, str(ROOT / "build_zipapp.py"), "-o", str(output)], check=True,
                   stdout=subprocess.DEVNULL, env=dict(os.environ, **env))


def _build_id(pyz: Path) -> str:
    with zipfile.ZipFile(pyz) as bundle:
        return re.search(r'BUILD_ID = "(\w+)"', bundle.read("smsuper/_build.py").decode())[1]


def _env(base_env: dict, cache: Path) -> dict:
    return dict(base_env, SMSUPER_CACHE_DIR=str(cache))


def _tree(cache: Path) -> Path:
    """The one published tree in a cache root."""
    entries = sorted(cache.iterdir())
    assert len(entries) == 1, entries  # no staging leftovers, no second copy
    return entries[0]


# ---- the build -----------------------------------------------------------------

def test_two_builds_are_byte_identical(pyz, tmp_path):
    _build(tmp_path / "one.pyz")
    _build(tmp_path / "two.pyz")
    assert _sha256(tmp_path / "one.pyz") == _sha256(tmp_path / "two.pyz")
    # The Python running the build does not matter either (3.9 has no tomllib).
    for oldest in sorted(PYENV.glob("3.9.*/bin/python"))[:1]:
        _build(tmp_path / "three.pyz", str(oldest))
        assert _sha256(tmp_path / "three.pyz") == _sha256(tmp_path / "one.pyz")


def test_source_date_epoch_sets_every_timestamp(pyz, tmp_path):
    _build(tmp_path / "dated.pyz", SOURCE_DATE_EPOCH="1700000000")  # 2023-11-14 22:13:20 UTC
    with zipfile.ZipFile(tmp_path / "dated.pyz") as bundle:
        assert {info.date_time for info in bundle.infolist()} == {(2023, 11, 14, 22, 13, 20)}
    # Same content, so the same build id as the undated build.
    assert _build_id(tmp_path / "dated.pyz") == _build_id(pyz)


def test_zip_layout(pyz):
    with zipfile.ZipFile(pyz) as bundle:
        infos = bundle.infolist()
        names = [info.filename for info in infos]
        assert names == sorted(names)
        assert "__main__.py" in names and "smsuper/_build.py" in names
        entries = set(names)
        for name in names:  # every directory has its own entry (namespace packages need them)
            parts = name.rstrip("/").split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                assert "/".join(parts[:depth]) + "/" in entries, name
        for info in infos:
            mode = info.external_attr >> 16
            assert mode == (0o40755 if info.is_dir() else 0o100644), (info.filename, oct(mode))
            assert "__pycache__" not in info.filename and not info.filename.endswith(".pyc")
            assert not info.filename.startswith(("tests/", "smsuper/tests/"))
        natives = [n for n in names if n.endswith(".so")]
        assert all(n.startswith("_native/") for n in natives), natives  # nothing zipimport cannot load
        for major, minor in SUPPORTED:
            for machine, libc in TARGETS:
                key = f"cpython-{major}{minor}-{machine}-{libc}"
                found = [n for n in natives if n.startswith(f"_native/{key}/setproctitle/_setproctitle.")]
                assert len(found) == 1, (key, found)
    assert pyz.stat().st_size < 3_000_000


def test_namespace_package_imports_straight_from_the_zip(pyz):
    # -S: no site-packages, so flask can only come from the zip.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import flask.sansio.app, flask, werkzeug, gunicorn, "
            "prometheus_client; assert flask.__file__.startswith(sys.argv[1]), flask.__file__; print('ok')")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(pyz)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr


# ---- the bootstrap ---------------------------------------------------------------

@pytest.mark.parametrize("python", _pyenv_pythons())
def test_first_start_compiles_later_starts_reuse(python, pyz, base_env, tmp_path):
    cache = tmp_path / "cache"
    env = _env(base_env, cache)
    version = python.parent.parent.name if python.parent.parent.parent == PYENV else ""
    expected = f"(build {_build_id(pyz)}, python {version}"
    cold = subprocess.run([str(python), str(pyz), "--version"], env=env, capture_output=True, text=True)
    assert cold.returncode == 0 and expected in cold.stdout and cold.stderr == "", (cold.stdout, cold.stderr)
    tree = _tree(cache)
    assert oct(tree.stat().st_mode & 0o777) == "0o755"
    assert not any(tree.rglob("_native")) and not (tree / "__main__.py").exists()

    # Warm: every smsuper module comes from the bytecode compiled on the first
    # start and nothing is written (python -v names each .pyc it loads).
    warm = subprocess.run([str(python), "-v", str(pyz), "--version"], env=env, capture_output=True, text=True)
    assert warm.returncode == 0 and expected in warm.stdout, warm.stderr[-2000:]
    loaded = re.findall(r"^# code object from '?([^'\n]+?)'?$", warm.stderr, re.M)
    from_tree = [path for path in loaded if path.startswith(str(tree))]
    assert any(path.startswith(str(tree / "smsuper" / "__pycache__")) for path in from_tree), loaded
    assert not [path for path in from_tree if not path.endswith(".pyc")]
    assert "# wrote " not in warm.stderr

    # The one extension extracted is the one this interpreter loads.
    sos = sorted(p.name for p in (tree / "setproctitle").glob("*.so"))
    assert len(sos) == 1, sos
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from setproctitle import _setproctitle; "
             "print(_setproctitle.__file__)")
    proc = subprocess.run([str(python), "-S", "-c", probe, str(tree)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith(str(tree)), proc.stderr


def test_bundled_libraries_come_first_on_sys_path(pyz, base_env, tmp_path):
    """Run the bootstrap in-process (runpy, as `python pyz` does) and look at what it left."""
    cache = tmp_path / "cache"
    code = (
        "import os, runpy, sys\n"
        "sys.argv = [sys.argv[1], '--version']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as done:\n    assert not done.code, done.code\n"
        "import gunicorn, flask\n"
        "print(sys.path[0]); print(gunicorn.__file__); print(gunicorn.__version__); "
        "print(os.environ['SMSUPER_CACHE_DIR'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(pyz)], env=_env(base_env, cache),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _, first, gunicorn_file, gunicorn_version, exported = proc.stdout.splitlines()
    tree = _tree(cache)
    assert first == str(tree) and gunicorn_file.startswith(str(tree))
    assert gunicorn_version == "23.0.0"
    assert exported == str(cache)


def test_no_usable_cache_warns_once_and_runs_from_the_zip(pyz, base_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = _env(base_env, blocker / "cache")  # cannot be created, even by root
    proc = subprocess.run([sys.executable, str(pyz), "--version"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("smsuper "), proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smsuper: WARNING:"), proc.stderr
    assert "SMSUPER_CACHE_DIR" in lines[0]

    # From the zip the extension cannot load: titles quietly do nothing.
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from smsuper import titles; "
            "print(titles.set_title('smsuper: test'), titles.available())")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(pyz)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "False False\n", proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_read_only_root_with_a_complete_tree_is_used(pyz, base_env, tmp_path):
    cache = tmp_path / "cache"
    env = _env(base_env, cache)
    subprocess.run([sys.executable, str(pyz), "--version"], env=env, check=True, capture_output=True)
    before = sorted(str(p) for p in cache.rglob("*"))
    script = ('mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && '
              'touch "$1/probe" 2>/dev/null && echo writable; exec "$2" "$3" --version')
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(cache), sys.executable, str(pyz)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 and "mount" in proc.stderr:
        pytest.skip(f"cannot make a read-only bind mount here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and proc.stdout.startswith("smsuper ") and proc.stderr == "", proc
    assert "writable" not in proc.stdout
    assert sorted(str(p) for p in cache.rglob("*")) == before


def test_concurrent_first_starts_publish_one_complete_tree(pyz, base_env, tmp_path):
    cache = tmp_path / "cache"
    env = _env(base_env, cache)
    procs = [subprocess.Popen([sys.executable, str(pyz), "--version"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [(proc.wait(), *proc.communicate()) for proc in procs]
    for code, out, err in results:
        assert code == 0 and out.startswith("smsuper ") and err == "", (code, out, err)
    tree = _tree(cache)
    with zipfile.ZipFile(pyz) as bundle:
        expected = {n.rstrip("/") for n in bundle.namelist()
                    if not n.startswith("_native/") and n != "__main__.py"}
    present = {p.relative_to(tree).as_posix() for p in tree.rglob("*")
               if "__pycache__" not in p.parts and p.suffix != ".so"}
    assert present == expected
    sources = [p for p in tree.rglob("*.py") if p.parts[-2] != "__pycache__"]
    tag = sys.implementation.cache_tag
    missing = [p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists()]
    # A module whose syntax this Python refuses has no bytecode; ours all compile.
    assert not [p for p in missing if "smsuper" in p.parts], missing
    assert len(missing) < len(sources) / 50, missing
    for path in [tree, *tree.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_first_start_prunes_old_trees_of_other_builds(pyz, base_env, tmp_path):
    cache = tmp_path / "cache"
    env = _env(base_env, cache)
    subprocess.run([sys.executable, str(pyz), "--version"], env=env, check=True, capture_output=True)
    tree = _tree(cache)
    key = tree.name[13:]
    now = time.time()
    ages = {"%012x" % n: age for n, age in enumerate([60, 120, 180, 240, 7200, 7300])}
    for build_id, age in ages.items():
        old = cache / f"{build_id}-{key}"
        old.mkdir()
        os.utime(old, (now - age, now - age))
    unrelated = [cache / f"{'f' * 12}-cpython-00-other-gnu", cache / "not-a-tree"]
    for path in unrelated:
        path.mkdir()
        os.utime(path, (now - 99999, now - 99999))
    shutil.rmtree(tree)
    subprocess.run([sys.executable, str(pyz), "--version"], env=env, check=True, capture_output=True)
    left = {path.name for path in cache.iterdir()}
    # Kept: this build, the 3 newest others, the 4th as it is recent, anything
    # not a tree of this interpreter; removed: the two old ones.
    kept_ids = ["%012x" % n for n in range(4)]
    assert left == {tree.name, *(f"{i}-{key}" for i in kept_ids), *(p.name for p in unrelated)}


# ---- process titles ----------------------------------------------------------------

def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_titles_helper_changes_the_title_from_the_cache_tree(pyz, base_env, tmp_path):
    cache = tmp_path / "cache"
    env = _env(base_env, cache)
    subprocess.run([sys.executable, str(pyz), "--version"], env=env, check=True, capture_output=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from smsuper.titles import set_title; "
            "print(set_title('smsuper: title test')); print(open('/proc/self/cmdline').read())")
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(_tree(cache))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    applied, cmdline = proc.stdout.splitlines()
    assert applied == "True" and cmdline.startswith("smsuper: title test"), proc.stdout


def test_init_title_shows_in_proc_cmdline(pyz, base_env):
    """End to end: `python pyz -- sleep` names itself `smsuper: init [sleep]`.

    Needs the passthrough init (smsuper/passthrough.py), which sets that title."""
    with subprocess.Popen([sys.executable, str(pyz), "--", "sleep", "60"], env=base_env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        try:
            deadline = time.monotonic() + 30  # a generous bound on waiting, not a performance check
            title = ""
            while time.monotonic() < deadline and proc.poll() is None:
                title = _cmdline(proc.pid)
                if title.startswith("smsuper: init"):
                    break
                time.sleep(0.05)
            assert title.startswith("smsuper: init [sleep]"), (title, proc.poll())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def test_a_warm_start_compiles_only_the_entry_not_the_publishing_code(pyz, base_env, tmp_path):
    """Python compiles the zip's __main__.py on every start and PID 1 keeps what that costs; a
    start that finds its tree already published loads none of the code that publishes one."""
    cache = tmp_path / "cache"
    env = _env(base_env, cache)
    code = (
        "import gc, runpy, sys, types\n"
        "pyz = sys.argv[1]; sys.argv = [pyz, '--version']\n"
        "try:\n    runpy.run_path(pyz, run_name='__main__')\n"
        "except SystemExit as done:\n    assert not done.code, done.code\n"
        "print(' '.join(sorted(f.__name__ for f in gc.get_objects() if isinstance(f, types.FunctionType)"
        " and f.__code__.co_filename.startswith(pyz))))\n"
    )
    cold = subprocess.run([sys.executable, "-c", code, str(pyz)], env=env, capture_output=True, text=True)
    assert cold.returncode == 0, cold.stderr
    assert _tree(cache).is_dir()  # the first start published the tree
    warm = subprocess.run([sys.executable, "-c", code, str(pyz)], env=env, capture_output=True, text=True)
    assert warm.returncode == 0 and warm.stderr == "", warm.stderr
    loaded = warm.stdout.splitlines()[-1].split()  # the line after --version's
    assert "main" in loaded and "publish" not in loaded and "find_or_publish" not in loaded, loaded
