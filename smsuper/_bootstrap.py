"""smsuper.pyz's runtime bootstrap: unpack once into a cache, then run smsuper.

The zip's __main__.py (smsuper/_entry.py) runs first and handles the warm
start, a tree of this build already published, by itself; this module is
compiled from the zip only when it finds none (the first start, or no usable
cache), so a warm start does not compile the publishing code and PID 1 does
not keep what compiling it costs. It runs from inside the zip, so it uses the
standard library only and imports nothing from the zip; the entry's own
functions (the platform key, the candidate roots, the safety check) come in
as `entry`, so the policy is written once.

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
take precedence over the image's site-packages in every process started from
the pyz: PID 1 and the gunicorn master and workers, hence also the user's
serving code imported there (it gets the bundled Flask, for one). A training
script runs as its own program with the image's normal sys.path.

The first start costs one to two seconds (mostly compiling); an image can pay it
at build time instead, with `RUN python /smsuper.pyz --version`.

Failure never stops smsuper: with no usable location it warns once on stderr
and runs straight from the zip (slower, and without process titles).
"""

import os
import sys

CACHE_SETTING = "SMSUPER_CACHE_DIR"  # declared in smsuper/settings.py


def publish(archive, root, name, key):
    """The cold path, in smsuper/_unpack.py, run in a forked child.

    A child because compiling the whole tree grows a heap of a few MB that a
    Python process never hands back: PID 1 would carry it for the life of the
    container (measured by bench/ figure 3). The child runs _unpack.py from
    the zip's source without importing the smsuper package from the zip (that
    package would then shadow the published tree); it is kept apart so warm
    starts do not compile it. The child's error, if any, comes back on a pipe.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: publish, report, never return into the parent's code
        os.close(read_end)
        code = 0
        try:
            import zipfile

            with zipfile.ZipFile(archive) as bundle:
                source = bundle.read("smsuper/_unpack.py")
            unpack = {"__name__": "smsuper._unpack"}
            exec(compile(source, archive + "/smsuper/_unpack.py", "exec"), unpack)
            unpack["publish"](archive, root, name, key)
        except BaseException as error:
            code = 1
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            try:
                os.write(write_end, ("%s: %s" % (type(error).__name__, reason)).encode("utf-8", "replace"))
            except OSError:
                pass
        os._exit(code)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        message = b"".join(chunks).decode("utf-8", "replace")
        raise OSError("publishing %s failed: %s" % (name, message or "status %d" % status))
    return os.path.join(root, name)


def find_or_publish(archive, build_id, entry):
    """(root, tree) of a complete tree for this build, or raise OSError."""
    key = entry["platform_key"]()
    name = "%s-%s" % (build_id, key)
    reasons = []
    for root, trusted in entry["candidate_roots"]():
        try:
            os.makedirs(root, mode=0o755, exist_ok=True)
            # Checked before trusting an existing tree: someone else's tree
            # could hold anything.
            if not trusted and not entry["safe_root"](root):
                reasons.append("%s is writable by others or owned by another user" % root)
                continue
            tree = os.path.join(root, name)
            if os.path.isdir(tree):  # only complete trees are ever renamed into place
                return root, tree
            return root, publish(archive, root, name, key)
        except OSError as error:
            reasons.append("%s: %s" % (root, error.strerror or error))
    raise OSError("; ".join(reasons))


def warn(message):
    try:
        os.write(2, ("smsuper: WARNING: %s\n" % message).encode("utf-8", "replace"))
    except OSError:
        pass


def find_tree(archive, build_id, entry):
    """(root, tree) for the entry to run from, or None (warned): run from the zip."""
    try:
        return find_or_publish(archive, build_id, entry)
    except Exception as error:  # the cache is an optimisation: never fatal
        warn("no usable cache directory (%s); running from the zip: slower starts, "
             "no process titles. Set %s to a writable directory." % (error, CACHE_SETTING))
        return None
