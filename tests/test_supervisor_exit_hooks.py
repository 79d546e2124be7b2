"""Each child's own exit hook (ChildSpec.on_exit), driven in-process on the Supervisor.

The supervisor runs in a forked copy of the test process (its signal handlers and its
waitpid(-1) must not touch pytest's own), which reports what happened as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smsuper import log  # noqa: E402
from smsuper.init.spawn import ChildSpec  # noqa: E402
from smsuper.init.supervisor import Supervisor  # noqa: E402

WAIT_LIMIT = 120.0


def _in_a_fork(job) -> dict:
    """Run job() in a forked child; return the dict it returned (plus its stderr)."""
    result_read, result_write = os.pipe()
    error_read, error_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(result_read)
            os.close(error_read)
            os.dup2(error_write, 2)
            log.configure("info", "text")
            os.write(result_write, json.dumps(job()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(result_write)
    os.close(error_write)
    with os.fdopen(result_read, "rb") as result, os.fdopen(error_read, "rb") as errors:
        stderr = errors.read().decode(errors="replace")
        text = result.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, stderr
    found = json.loads(text)
    found["stderr"] = stderr
    return found


def test_each_child_hears_only_its_own_exit():
    def job() -> dict:
        supervisor = Supervisor(grace_period=WAIT_LIMIT)
        heard = []

        def hook(name):
            return lambda child, status: heard.append([name, child.spec.role, status.code])

        supervisor.start(ChildSpec(role="first", argv=["sh", "-c", "exit 3"], on_exit=hook("first's hook")))
        supervisor.start(ChildSpec(role="second", argv=["sh", "-c", "exit 0"], on_exit=hook("second's hook")))
        supervisor.start(ChildSpec(role="silent", argv=["true"]))  # no hook: nothing to call
        return {"code": supervisor.run(), "heard": sorted(heard)}

    found = _in_a_fork(job)
    assert found["heard"] == [["first's hook", "first", 3], ["second's hook", "second", 0]], found["stderr"]
    assert found["code"] == 3, found["stderr"]  # no primary: the first non-zero code


def test_a_hook_that_raises_stops_the_job_gracefully_and_the_others_still_run():
    def job() -> dict:
        supervisor = Supervisor(grace_period=WAIT_LIMIT)
        heard = []

        def broken(child, status):
            raise RuntimeError("a bug in an exit hook")

        # The primary child runs until the stop; its own hook still hears how it ended.
        supervisor.start(ChildSpec(role="server", argv=["sleep", "600"],
                                   on_exit=lambda child, status: heard.append(["server", status.signal])),
                         primary=True)
        supervisor.start(ChildSpec(role="helper", argv=["true"], on_exit=broken))
        return {"code": supervisor.run(), "heard": heard}

    found = _in_a_fork(job)
    logged = found["stderr"]
    assert found["code"] == 1, logged
    assert found["heard"] == [["server", 15]], logged  # stopped with SIGTERM, not killed after the grace period
    assert "internal error in the exit hook of helper: RuntimeError: a bug in an exit hook" in logged
    assert logged.count("Traceback (most recent call last)") == 1, logged
