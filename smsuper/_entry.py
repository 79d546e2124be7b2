# smsuper.pyz's entry point: build_zipapp.py copies this file to the zip's __main__.py and
# appends a call `main(BUILD_ID)`. Python compiles this file from source on every start (a zip
# holds no bytecode) and PID 1 keeps what compiling cost for the life of the container, so it
# holds the warm path only: find the tree a start before published (the policy is in
# smsuper/_bootstrap.py's docstring) and run smsuper from it. Everything else (publishing a
# tree, the warning when there is no usable cache) lives in smsuper/_bootstrap.py, compiled
# only when this path finds no tree. Standard library only, nothing imported from the zip.

import os
import sys

CACHE_SETTING = "SMSUPER_CACHE_DIR"  # declared in smsuper/settings.py
SYSTEM_ROOT = "/var/cache/smsuper"


def platform_key():
    # Which compiled extensions and bytecode fit this interpreter.
    tag = sys.implementation.cache_tag + ("t" if "t" in getattr(sys, "abiflags", "") else "")
    machine = os.uname().machine
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    try:
        libc = "gnu" if (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") else "musl"
    except (ValueError, OSError):  # musl's headers do not know the name
        libc = "musl"
    return "%s-%s-%s" % (tag, machine, libc)


def candidate_roots():
    # (root, trusted as given) in order of preference.
    explicit = os.environ.get(CACHE_SETTING, "").strip()
    if explicit:
        return [(os.path.abspath(explicit), True)]
    roots = [SYSTEM_ROOT]
    home = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(home):
        home = os.path.join(os.path.expanduser("~"), ".cache")
    if os.path.isabs(home):  # expanduser leaves "~" when this uid has no home
        roots.append(os.path.join(home, "smsuper"))
    roots.append("/tmp/smsuper-cache-%d" % os.getuid())
    return [(root, False) for root in roots]


def safe_root(root):
    # Only this user (or root) can have put anything there.
    info = os.stat(root)
    return info.st_uid in (0, os.getuid()) and not info.st_mode & 0o022


def published(name):
    # (root, tree) when the first root the whole policy would settle on already holds this
    # build's tree; None whenever it would do anything else (create a root, publish).
    for root, trusted in candidate_roots():
        try:
            if not os.path.isdir(root):
                return None
            if not trusted and not safe_root(root):
                continue
            tree = os.path.join(root, name)
            return (root, tree) if os.path.isdir(tree) else None
        except OSError:
            return None
    return None


def forget_the_zip(archive):
    # Free zipimport's table of the zip's entries (a tuple per entry, about 0.5 MB, kept for
    # the life of the process) once nothing is imported from the zip, before smsuper's own
    # modules load into that memory. Emptied in place: the zip's importer holds it too.
    import zipimport

    cache = getattr(zipimport, "_zip_directory_cache", None)
    if not isinstance(cache, dict):
        return
    for path, files in list(cache.items()):
        if isinstance(files, dict) and os.path.abspath(path) == archive:
            files.clear()


def cold_start(archive, build_id):
    # smsuper/_bootstrap.py from the zip, without importing the smsuper package from it
    # (that package would then shadow the published tree).
    import zipimport

    code = zipimport.zipimporter(os.path.join(archive, "smsuper")).get_code("_bootstrap")
    bootstrap = {"__name__": "smsuper._bootstrap", "__file__": code.co_filename}
    exec(code, bootstrap)
    return bootstrap["find_tree"](archive, build_id, globals())


def main(build_id):
    archive = os.path.dirname(os.path.abspath(__file__))  # __file__ is PYZ/__main__.py
    if os.path.isfile(archive):
        old_umask = os.umask(0o022)  # the published tree must be readable by all
        try:
            found = published("%s-%s" % (build_id, platform_key())) or cold_start(archive, build_id)
            if found:
                root, tree = found
                os.environ[CACHE_SETTING] = root
                if sys.path and os.path.abspath(sys.path[0]) == archive:
                    sys.path[0] = tree
                else:
                    sys.path.insert(0, tree)
                forget_the_zip(archive)
        finally:
            os.umask(old_umask)

    from smsuper.__main__ import run

    run()
