"""Shared fixtures: every test runs the built dist/smsuper.pyz, not the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pyz() -> Path:
    """Build dist/smsuper.pyz once per test session and return its path."""
    out = ROOT / "dist" / "smsuper.pyz"
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture()
def base_env(tmp_path) -> dict:
    """An environment for running smsuper directly on this (privileged-looking) machine."""
    env = dict(os.environ)
    env["SMSUPER_ALLOW_PRIVILEGED"] = "1"  # the dev machine looks like a privileged container
    # Workloads keep uid 0 (still without capabilities and with no_new_privs): these tests are
    # about other behaviour, and their files live where only root may go (pytest's 0700 tmp
    # dirs, the Pythons under /root/.pyenv). tests/test_privileges.py runs the default
    # (nobody) and a USER 1000 image in real containers.
    env["SMSUPER_USER"] = "root"
    env["SMSUPER_CACHE_DIR"] = str(ROOT / ".cache" / "pyz")  # shared across tests: extraction is once per build
    env["SMSUPER_METRICS_PORT"] = "0"
    env.pop("PYTHONPATH", None)
    return env


def pytest_collection_finish(session) -> None:
    """Start building the container base images as soon as we know a test needs them.

    debootstrap of four Debian suites takes minutes; started here, it overlaps with
    every non-container test instead of waiting for the first container test.
    """
    if not any("images" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    try:
        from tests import containers
    except ImportError:
        import containers  # type: ignore[no-redef]
    import shutil

    if shutil.which("podman") and shutil.which("debootstrap"):
        containers.Images.get()
