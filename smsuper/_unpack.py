"""The bootstrap's cold path: extract, compile and publish the pyz's tree.

Runs once per build, interpreter and cache root (see smsuper/_bootstrap.py for
the policy); the bootstrap executes this file's source from the zip, so it
uses the standard library only.
"""

import os

NATIVE_DIR = "_native/"  # in the zip: _native/KEY/<path in the tree>
STALE_STAGING_SECONDS = 600  # a staging directory this old belongs to a dead process
# Trees of other builds for the same interpreter pile up where pyz files are
# rebuilt often (a developer's cache): keep the newest few, and never remove
# one published recently, which a process of that build may still be using.
KEEP_OTHER_BUILDS = 3
KEEP_RECENT_SECONDS = 3600


def extract(archive, staging, key):
    """The whole zip except the bootstrap, with only this platform's natives."""
    import zipfile

    mine = NATIVE_DIR + key + "/"
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            name = info.filename
            if name.startswith(NATIVE_DIR):
                if not name.startswith(mine):
                    continue
                name = name[len(mine):]
            if not name or name == "__main__.py" or ".." in name.split("/"):
                continue
            target = os.path.join(staging, *name.split("/"))
            if name.endswith("/"):
                os.makedirs(target, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(bundle.read(info))


def remove_stale_staging(root, prefix):
    import shutil
    import time

    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            if name.startswith(prefix) and time.time() - os.stat(path).st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def prune_other_builds(root, name, key):
    import shutil
    import time

    suffix = "-" + key
    others = []
    for entry in os.listdir(root):
        build_id = entry[: -len(suffix)] if entry.endswith(suffix) else ""
        if entry != name and len(build_id) == 12 and all(c in "0123456789abcdef" for c in build_id):
            path = os.path.join(root, entry)
            try:
                others.append((os.stat(path).st_mtime, path))
            except OSError:
                pass
    others.sort(reverse=True)
    for published, path in others[KEEP_OTHER_BUILDS:]:
        if time.time() - published > KEEP_RECENT_SECONDS:
            shutil.rmtree(path, ignore_errors=True)


def publish(archive, root, name, key):
    """Extract, compile and rename into ROOT/NAME; returns the published tree."""
    import compileall
    import py_compile
    import shutil
    import tempfile
    import warnings

    final = os.path.join(root, name)
    prefix = ".staging-%s." % name
    remove_stale_staging(root, prefix)
    staging = tempfile.mkdtemp(prefix=prefix, dir=root)
    try:
        extract(archive, staging, key)
        # Unchecked hashes: the tree never changes once published, so imports
        # need not stat every source file; ddir makes tracebacks name the
        # final paths rather than the staging ones.
        # Warnings silenced: a newer Python's SyntaxWarnings about a vendored
        # library are not the user's business.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compileall.compile_dir(
                staging, ddir=final, quiet=2,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        try:
            os.rename(staging, final)
            staging = None
        except OSError:
            if not os.path.isdir(final):
                raise
            # Another process published first: its tree is as good as ours.
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    try:
        prune_other_builds(root, name, key)
    except OSError:
        pass  # housekeeping only
    return final
