"""PID 1's short helper programs (init/capture.py): their output, and never a hang or a zombie."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smsuper.init import capture, procfs  # noqa: E402

SH = shutil.which("sh")


def children_of_this_process() -> set:
    """Our own child processes, zombies included (a zombie is a child nobody reaped)."""
    return {pid for pid, (parent, _state) in procfs.process_table().items() if parent == os.getpid()}


def test_a_helper_s_output_and_errors_come_back_together():
    # Only the children this call leaves count: an earlier test in the same session may have
    # stopped a server whose exit nobody has collected yet.
    before = children_of_this_process()
    out = capture.output([SH, "-c", "echo on-stdout; echo on-stderr >&2"], timeout=60)
    assert out is not None
    assert b"on-stdout" in out and b"on-stderr" in out
    assert children_of_this_process() - before == set()


def test_a_helper_that_cannot_run_gives_none(tmp_path):
    before = children_of_this_process()
    assert capture.output([str(tmp_path / "missing")], timeout=60) is None
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    assert capture.output([str(script)], timeout=60) is None
    assert children_of_this_process() - before == set()


def test_a_helper_that_does_not_finish_in_time_is_killed_and_reaped():
    # It closes its output at once (the read ends) and then never exits: the wait is bounded too.
    before = children_of_this_process()
    for command in ("exec sleep 300", "exec >/dev/null 2>&1; exec sleep 300"):
        assert capture.output([SH, "-c", command], timeout=0.5) is None
        assert children_of_this_process() - before == set()


def test_a_helper_does_not_inherit_ignored_signals():
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a process may have set it
    try:
        out = capture.output([SH, "-c", "grep SigIgn /proc/self/status"], timeout=60)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert out is not None
    ignored = int(out.split()[-1], 16)
    assert not ignored & (1 << (signal.SIGTERM - 1))


def test_a_program_is_found_in_path_or_by_its_own_path(tmp_path):
    program = tmp_path / "bin" / "tool"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tool").write_text("not executable")
    path = os.pathsep.join([str(tmp_path / "other"), str(tmp_path / "bin")])
    assert capture.find_program("tool", path) == str(program)
    assert capture.find_program(str(program), "") == str(program)
    assert capture.find_program("absent", path) is None
    program.chmod(stat.S_IRUSR)
    assert capture.find_program("tool", path) is None  # root too: no execute bit at all
