"""smsuper.pyz's runtime bootstrap: unpack once into a cache, then run smsuper.

build_zipapp.py copies this file to the zip's __main__.py and appends a call
`main(BUILD_ID)`. It runs from inside the zip before anything else, so it
uses the standard library only and imports nothing from the zip.

Why unpack: zipimport cannot load setproctitle's compiled extension, and
importing from a zip that holds no bytecode recompiles every module on every
start (2.5 to 3 times slower). So the first start extracts the bundled tree
(smsuper, the vendored libraries, and the one setproctitle extension built for
this interpreter and platform), compiles it, and publishes it atomically as
ROOT/BUILDID-KEY (KEY: cache tag, machine, libc; e.g. cpython-311-x86_64-gnu).
Later starts find that directory and only put it on sys.path.

Atomic: each process extracts into its own temporary directory inside ROOT and
renames it into place; rename() of a directory onto an existing one fails, so
the loser discards its copy and uses the winner's. A published directory is
always complete, so no lock is needed and nobody sees a half-written tree.

ROOT is the setting SMSUPER_CACHE_DIR when set (trusted as given), else the
first usable of /var/cache/smsuper, $XDG_CACHE_HOME/smsuper (or
~/.cache/smsuper), /tmp/smsuper-cache-UID. A default root is trusted only when
owned by this user or root and not writable by others (anyone could create
/tmp/smsuper-cache-0 and plant code for root to import). A root that already
holds this build is used even when read-only. The root used is exported as
SMSUPER_CACHE_DIR so children started later (gunicorn, smsuper's own helpers)
find the same tree. The tree is world-readable, so unprivileged children of a
root PID 1 can use it.

sys.path: the tree replaces the zip as sys.path[0], so the bundled libraries
take precedence over the image's site-packages for smsuper's own process (the
user's code in a child process starts with its normal sys.path).

Failure never stops smsuper: with no usable location it warns once on stderr
and runs straight from the zip (slower, and without process titles).
"""

import os
import sys

CACHE_SETTING = "SMSUPER_CACHE_DIR"  # declared in smsuper/settings.py
SYSTEM_ROOT = "/var/cache/smsuper"
NATIVE_DIR = "_native/"  # in the zip: _native/KEY/<path in the tree>
STALE_STAGING_SECONDS = 600  # a staging directory this old belongs to a dead process


def platform_key():
    """Which compiled extensions and bytecode fit this interpreter."""
    tag = sys.implementation.cache_tag + ("t" if "t" in getattr(sys, "abiflags", "") else "")
    machine = os.uname().machine
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine)
    try:
        libc = "gnu" if (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc") else "musl"
    except (ValueError, OSError):  # musl's headers do not know the name
        libc = "musl"
    return "%s-%s-%s" % (tag, machine, libc)


def candidate_roots():
    """(root, trusted as given) in order of preference."""
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
    """Only this user (or root) can have put anything there."""
    info = os.stat(root)
    return info.st_uid in (0, os.getuid()) and not info.st_mode & 0o022


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


def publish(archive, root, name, key):
    """Extract, compile and rename into ROOT/NAME; returns the published tree."""
    import compileall
    import py_compile
    import shutil
    import tempfile

    final = os.path.join(root, name)
    prefix = ".staging-%s." % name
    remove_stale_staging(root, prefix)
    staging = tempfile.mkdtemp(prefix=prefix, dir=root)
    try:
        extract(archive, staging, key)
        # Unchecked hashes: the tree never changes once published, so imports
        # need not stat every source file; ddir makes tracebacks name the
        # final paths rather than the staging ones.
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
    return final


def find_or_publish(archive, build_id):
    """(root, tree) of a complete tree for this build, or raise OSError."""
    key = platform_key()
    name = "%s-%s" % (build_id, key)
    reasons = []
    for root, trusted in candidate_roots():
        try:
            if os.path.isdir(root) and not trusted and not safe_root(root):
                reasons.append("%s is writable by others or owned by another user" % root)
                continue
            tree = os.path.join(root, name)
            if os.path.isdir(tree):  # only complete trees are ever renamed into place
                return root, tree
            os.makedirs(root, mode=0o755, exist_ok=True)
            if not trusted and not safe_root(root):
                reasons.append("%s is writable by others or owned by another user" % root)
                continue
            return root, publish(archive, root, name, key)
        except OSError as error:
            reasons.append("%s: %s" % (root, error.strerror or error))
    raise OSError("; ".join(reasons))


def warn(message):
    try:
        os.write(2, ("smsuper: WARNING: %s\n" % message).encode("utf-8", "replace"))
    except OSError:
        pass


def main(build_id):
    archive = os.path.dirname(os.path.abspath(__file__))  # __file__ is PYZ/__main__.py
    if os.path.isfile(archive):
        old_umask = os.umask(0o022)  # the published tree must be readable by all
        try:
            root, tree = find_or_publish(archive, build_id)
        except Exception as error:  # the cache is an optimisation: never fatal
            warn("no usable cache directory (%s); running from the zip: slower starts, "
                 "no process titles. Set %s to a writable directory." % (error, CACHE_SETTING))
        else:
            os.environ[CACHE_SETTING] = root
            if sys.path and os.path.abspath(sys.path[0]) == archive:
                sys.path[0] = tree
            else:
                sys.path.insert(0, tree)
        finally:
            os.umask(old_umask)

    from smsuper.__main__ import run

    run()
