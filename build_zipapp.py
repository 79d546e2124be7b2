#!/usr/bin/env python3
"""Reproducible build of smsuper.pyz: `python build_zipapp.py [-o PATH]`.

The result is one zip that runs on CPython 3.9 to 3.14, Linux x86_64 and
aarch64, glibc and musl. What goes in:

  __main__.py         the runtime entry (smsuper/_entry.py plus a call that
                      carries this build's id): the warm start; the rest of the
                      bootstrap and the cache-directory policy are in
                      smsuper/_bootstrap.py
  smsuper/            the package from this checkout, plus a generated _build.py
  flask/, gunicorn/   the runtime dependencies, unpacked from their wheels
  ...                 (pure Python only; MarkupSafe's optional speedups are
                      dropped, it falls back to its pure-Python code)
  _native/<key>/      setproctitle's compiled extension, one per interpreter
                      and platform; <key> is CACHE_TAG-MACHINE-LIBC, e.g.
                      cpython-311-x86_64-gnu. The bootstrap extracts only the
                      one matching the running interpreter.

Why unpack the wheels here instead of `pip install --target`: pip writes
timestamps, RECORD files and byte-compiled caches that differ between runs;
reading the wheels ourselves keeps two builds of one checkout byte-identical
(sorted entries, one fixed timestamp, normalised modes, fixed compression
level). SOURCE_DATE_EPOCH, when set, gives the timestamp; otherwise it is
1980-01-01. Identical bytes also assume the same zlib on both machines.

Pins live in two places, each declared once: the direct dependencies in
pyproject.toml's [project].dependencies, their dependencies in
TRANSITIVE_LOCK below. The build checks every Requires-Dist of every bundled
wheel against what it bundles, so a new or tightened transitive dependency
cannot be silently left out.

Wheels are downloaded with `pip download` into build/wheels/ (one directory
per wheel and target, reused by later builds, so a warm rebuild never touches
the network).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Tuple

ROOT = Path(__file__).resolve().parent
WHEEL_CACHE = ROOT / "build" / "wheels"
DEFAULT_OUTPUT = ROOT / "dist" / "smsuper.pyz"

# Dependencies of the direct dependencies, each the newest release that still
# supports Python 3.9 (a newer one would break the 3.9 images):
TRANSITIVE_LOCK: Dict[str, str] = {
    # flask 3.1.3
    "werkzeug": "3.1.9",
    "jinja2": "3.1.6",
    "markupsafe": "3.0.4",          # only its pure-Python code is used
    "itsdangerous": "2.2.0",
    "blinker": "1.9.0",
    "click": "8.1.8",               # 8.2 and later need 3.10
    "importlib-metadata": "8.7.1",  # flask imports it on 3.9 only; 8.8 and later need 3.10
    "zipp": "3.23.1",               # importlib-metadata's; 4.x needs 3.10
    # gunicorn 23.0.0
    "packaging": "26.3",            # used only by the gevent and eventlet workers
    # wsproto 1.2.0
    "h11": "0.16.0",
}

# Packages whose wheels carry a compiled extension we ship (one per target).
# setproctitle 1.3.7 is the single release with cp39..cp314 wheels for all
# four platforms below (1.3.8 dropped cp39, 1.3.6 has no cp314), so one
# version serves every interpreter.
NATIVE = ("setproctitle",)
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
# (pip --platform value, machine, libc): manylinux2014 is glibc >= 2.17, the
# oldest glibc any supported base image has; musllinux_1_2 is Alpine >= 3.13.
PLATFORMS = (
    ("manylinux2014_x86_64", "x86_64", "gnu"),
    ("manylinux2014_aarch64", "aarch64", "gnu"),
    ("musllinux_1_2_x86_64", "x86_64", "musl"),
    ("musllinux_1_2_aarch64", "aarch64", "musl"),
)
# Packages published only as platform wheels whose pure-Python code is enough
# (MarkupSafe falls back from its _speedups extension to _native); a fixed
# target makes the choice of wheel independent of the build machine.
PURE_PART_ONLY = ("markupsafe",)
PURE_PART_FROM = ("manylinux2014_x86_64", "3.9")

DEFAULT_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip can hold
SHEBANG = b"#!/usr/bin/env python3\n"
# Never bundled from a wheel: compiled code for one platform (shipped apart in
# _native/), its C source and stubs, byte code, and the installer's files
# (RECORD's hashes would no longer match; WHEEL names one platform's tags).
SKIPPED_IN_WHEELS = re.compile(r"(\.so|\.pyd|\.c|\.pyc|\.pyi)$|(^|/)__pycache__/|\.dist-info/(RECORD|WHEEL)$")
SKIPPED_IN_SOURCE = re.compile(r"(\.pyc|\.pyo|~|\.swp)$|(^|/)(__pycache__|\.[^/]*)(/|$)")


class Wheel(NamedTuple):
    name: str
    version: str
    python: str     # "3.9", or "" for a pure wheel (any Python)
    platform: str   # pip --platform value, or "" for a pure wheel


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- pins --------------------------------------------------------------------

def direct_pins() -> Dict[str, str]:
    """name -> version from pyproject.toml's [project].dependencies (all `==`)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib  # Python >= 3.11

        requirements = tomllib.loads(text)["project"]["dependencies"]
    except ImportError:  # an older Python runs the build: read the one array we need
        block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", text, re.S | re.M)
        if block is None:
            raise SystemExit("build: no [project].dependencies array in pyproject.toml")
        requirements = re.findall(r'"([^"]+)"', block.group(1))
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([A-Za-z0-9_.!+-]+)\s*", requirement)
        if not match:
            raise SystemExit(f"build: {requirement!r} in pyproject.toml is not pinned with ==")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def wanted_wheels(pins: Dict[str, str]) -> List[Wheel]:
    platform_tag, python = PURE_PART_FROM
    wheels = []
    for name, version in sorted(pins.items()):
        if name in NATIVE:
            wheels += [Wheel(name, version, py, plat) for py in PYTHONS for plat, _, _ in PLATFORMS]
        elif name in PURE_PART_ONLY:
            wheels.append(Wheel(name, version, python, platform_tag))
        else:
            wheels.append(Wheel(name, version, "", ""))
    return wheels


# ---- downloads -----------------------------------------------------------------

def cache_dir(wheel: Wheel) -> Path:
    target = f"cp{wheel.python.replace('.', '')}-{wheel.platform}" if wheel.platform else "any"
    return WHEEL_CACHE / f"{wheel.name}-{wheel.version}" / target


def fetch(wheel: Wheel) -> Path:
    """The wheel file, downloaded once into its own cache directory."""
    directory = cache_dir(wheel)
    found = sorted(directory.glob("*.whl"))
    if len(found) == 1:
        return found[0]
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--dest", str(directory)]
    if wheel.platform:
        tag = "cp" + wheel.python.replace(".", "")
        command += ["--platform", wheel.platform, "--python-version", wheel.python,
                    "--implementation", "cp", "--abi", tag]
    else:
        # The lowest Python we support: pip refuses a release whose
        # Requires-Python excludes it.
        command += ["--python-version", "3.9", "--implementation", "py", "--abi", "none",
                    "--platform", "any"]
    command.append(f"{wheel.name}=={wheel.version}")
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = sorted(directory.glob("*.whl"))
    if result.returncode != 0 or len(found) != 1:
        sys.stderr.write(result.stdout)
        raise SystemExit(f"build: could not download {wheel} (see pip's output above)")
    return found[0]


def fetch_all(wheels: List[Wheel]) -> Dict[Wheel, Path]:
    # pip spends most of its time waiting on the network: a few at once.
    with ThreadPoolExecutor(max_workers=6) as pool:
        return dict(zip(wheels, pool.map(fetch, wheels)))


# ---- contents ------------------------------------------------------------------

def add(files: Dict[str, bytes], name: str, data: bytes, origin: str) -> None:
    if name in files and files[name] != data:
        raise SystemExit(f"build: {name} comes from two places with different contents ({origin})")
    files[name] = data


def wheel_files(path: Path) -> Iterable[Tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if ".data/" in info.filename.split("/", 1)[0] + "/":
                raise SystemExit(f"build: {path.name} has a .data directory; teach the build about it")
            yield info.filename, archive.read(info)


def native_key(wheel: Wheel) -> str:
    """The _native/ directory of a target; the bootstrap computes the same key."""
    machine, libc = next((m, c) for p, m, c in PLATFORMS if p == wheel.platform)
    return f"cpython-{wheel.python.replace('.', '')}-{machine}-{libc}"


def bundle_wheels(downloaded: Dict[Wheel, Path], files: Dict[str, bytes]) -> None:
    for wheel, path in sorted(downloaded.items()):
        for name, data in wheel_files(path):
            if wheel.name in NATIVE and name.endswith(".so"):
                add(files, f"_native/{native_key(wheel)}/{name}", data, path.name)
            elif not SKIPPED_IN_WHEELS.search(name):
                # The pure part of a native package is the same in each of its
                # wheels (checked by add()), so it is stored once.
                add(files, name, data, path.name)


def _packaging():
    """packaging's Requirement, SpecifierSet and Version: installed, or pip's copy."""
    try:
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement  # type: ignore
        from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore
        from pip._vendor.packaging.version import Version  # type: ignore
    return Requirement, SpecifierSet, Version


def check_requirements(files: Dict[str, bytes]) -> None:
    """Every bundled distribution supports every Python in PYTHONS, and each of
    its Requires-Dist that applies on Linux to one of them is bundled, at a
    version its specifier allows."""
    Requirement, SpecifierSet, Version = _packaging()
    bundled: Dict[str, str] = {}
    requires: List[Tuple[str, str]] = []
    for name, data in files.items():
        if name.endswith(".dist-info/METADATA"):
            text = data.decode("utf-8", "replace")
            dist = canonical(re.search(r"^Name:\s*(\S+)", text, re.M).group(1))
            bundled[dist] = re.search(r"^Version:\s*(\S+)", text, re.M).group(1)
            requires += [(dist, line) for line in re.findall(r"^Requires-Dist:\s*(.+?)\s*$", text, re.M)]
            supports = SpecifierSet((re.findall(r"^Requires-Python:\s*(.+?)\s*$", text, re.M) or [""])[0])
            unsupported = [py for py in PYTHONS if not supports.contains(py + ".0", prereleases=True)]
            if unsupported:
                raise SystemExit(f"build: {dist} {bundled[dist]} does not support Python {unsupported}")
    problems = set()
    for dist, line in requires:
        requirement = Requirement(line)
        environments = [{"python_version": py, "python_full_version": py + ".0", "sys_platform": "linux",
                         "platform_system": "Linux", "os_name": "posix", "platform_machine": machine,
                         "implementation_name": "cpython", "platform_python_implementation": "CPython",
                         "extra": ""}
                        for py in PYTHONS for machine in ("x86_64", "aarch64")]
        if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
            continue
        need = canonical(requirement.name)
        if need not in bundled:
            problems.add(f"{need} is missing (required by {dist}): add it to TRANSITIVE_LOCK")
        elif not requirement.specifier.contains(Version(bundled[need]), prereleases=True):
            problems.add(f"{need} {bundled[need]} does not satisfy {dist}'s {line!r}")
    if problems:
        raise SystemExit("build: " + "; ".join(sorted(problems)))


def source_files(files: Dict[str, bytes]) -> None:
    package = ROOT / "smsuper"
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir() or SKIPPED_IN_SOURCE.search(relative) or relative == "smsuper/_build.py":
            continue
        add(files, relative, path.read_bytes(), "checkout")


def build_id(files: Dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        digest.update(b"%s\0%d\0" % (name.encode(), len(data)))
        digest.update(data)
    return digest.hexdigest()[:12]


def generated_files(files: Dict[str, bytes], identity: str) -> Dict[str, bytes]:
    build_module = (
        '"""Written by build_zipapp.py: which build of smsuper.pyz this is."""\n\n'
        f'BUILD_ID = "{identity}"\n'
    )
    entry = files["smsuper/_entry.py"].decode("utf-8")
    main = (
        "# smsuper.pyz entry point, generated by build_zipapp.py from smsuper/_entry.py.\n"
        + entry
        + f'\n\nif __name__ == "__main__":\n    main("{identity}")\n'
    )
    return {"smsuper/_build.py": build_module.encode(), "__main__.py": main.encode()}


# ---- the zip -------------------------------------------------------------------

def zip_time() -> Tuple[int, int, int, int, int, int]:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or DEFAULT_EPOCH)
    return time.gmtime(max(epoch, DEFAULT_EPOCH))[:6]


def with_directories(files: Dict[str, bytes]) -> Dict[str, bytes]:
    """Add an entry for every directory: zipimport finds namespace packages
    (flask.sansio) through them before Python 3.14."""
    entries = dict(files)
    for name in files:
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            entries.setdefault("/".join(parts[:depth]) + "/", b"")
    return entries


def write_zip(entries: Dict[str, bytes], output: Path) -> None:
    stamp = zip_time()
    buffer = io.BytesIO()
    buffer.write(SHEBANG)  # lets `./smsuper.pyz` run too; zipimport skips leading bytes
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, stamp)
            info.create_system = 3  # Unix, so the modes below mean what they say
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10  # 0x10: MS-DOS directory bit
                info.compress_type = zipfile.ZIP_STORED
                archive.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, entries[name], compresslevel=9)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    os.chmod(partial, 0o755)
    os.replace(partial, output)  # a reader never sees a half-written pyz


def build(output: Path) -> Tuple[int, str]:
    pins = direct_pins()
    overlap = set(pins) & set(TRANSITIVE_LOCK)
    if overlap:
        raise SystemExit(f"build: pinned twice: {sorted(overlap)}")
    pins.update(TRANSITIVE_LOCK)
    files: Dict[str, bytes] = {}
    bundle_wheels(fetch_all(wanted_wheels(pins)), files)
    check_requirements(files)
    source_files(files)
    identity = build_id(files)
    files.update(generated_files(files, identity))
    write_zip(with_directories(files), output)
    return output.stat().st_size, identity


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"where to write the pyz (default: {DEFAULT_OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    size, identity = build(args.output)
    print(f"built {args.output}: {size} bytes ({size / 1e6:.2f} MB), build {identity}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
