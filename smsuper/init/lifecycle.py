"""The one lifecycle every job runs through: train, serve and a pass-through command.

A job says what is its own (the `Job` methods below); PID 1's duties come in one order
whatever the job:

  1. logging, from SMSUPER_LOG_LEVEL and SMSUPER_LOG_FORMAT (a bad value is reported by 3);
     a child subreaper when smsuper is not PID 1, so orphans come back to us;
  2. job.begin(): what comes before the settings (its arguments, stale outcome files);
  3. inside the stop guard (no child exists yet and PID 1 has no default signal actions, so
     without it a stop would be lost): the job's settings validated, the start checks (a
     privileged container refused, the workload's account), job.prepare(account) with every
     decision of the job, the process title, and the supervisor, whose handlers take over
     from the guard's without a gap;
  4. job.start_metrics(supervisor), while PID 1 may still bind a port below 1024;
  5. job.start(supervisor): the first children, each with its own exit hook;
  6. PID 1 drops the capabilities it no longer needs; the supervisor's loop runs until
     every descendant is gone;
  7. job.cleanup(), always, then job.finish(code) gives the exit code.

A problem found before the loop runs is a JobFailure (a bad setting, a refused account, a
stop before the workload started, a program that cannot start): job.fail(problem) reports
it and its exit code ends the job. smsuper's own bug still ends through job.internal_error.
"""

from __future__ import annotations

import os

from .. import log, settings
from . import privileges
from .stopguard import StopRequested, stop_guard
from .supervisor import DEFAULT_STOP_SIGNALS, Supervisor

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Any, Dict, Optional

CONFIG_ERROR = 2  # what a bad setting, argument or account ends the job with
INTERNAL_ERROR = 1


class JobFailure(Exception):
    """The job cannot run. `kind` heads the training failure reason; `message` is logged
    (empty: already said); `exit_code` ends the job."""

    def __init__(self, message: str, exit_code: int = CONFIG_ERROR, kind: str = "ConfigError"):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.kind = kind


class Job:
    """What a job tells the lifecycle. Every method has the plain default; a job overrides
    what is its own."""

    name = "command"  # the settings' word for the job (settings.validate, per-job defaults)
    workload = "the command"  # what a stop before it started names
    stop_signals = DEFAULT_STOP_SIGNALS  # received by PID 1, these stop the job
    rewrites_stop = True  # SMSUPER_STOP_SIGNAL and SMSUPER_SUCCESS_EXIT_CODES apply
    supervisor: Supervisor  # set by the lifecycle once it exists

    def begin(self) -> None:
        """Before the settings are read. Raises JobFailure."""

    def prepare(self, account: privileges.Workload) -> None:
        """Every decision, before any child of the job exists. Raises JobFailure (or
        settings.SettingError, PrivilegeError: both are reported as a JobFailure)."""

    def title(self) -> str:
        return f"smsuper: init [{self.name}]"

    def supervisor_options(self) -> Dict[str, Any]:
        """The Supervisor's keyword arguments beyond the grace period and the stop signals."""
        return {}

    def start_metrics(self, supervisor: Supervisor) -> None:
        """PID 1's metrics endpoint, if the job has one."""

    def start(self, supervisor: Supervisor) -> None:
        """The first children. Raises JobFailure when nothing could start."""

    def cleanup(self) -> None:
        """Always called once, after the loop or a failure, whatever state the job got to."""

    def finish(self, code: int) -> int:
        """The job's exit code, from the supervisor's."""
        return code

    def fail(self, problem: JobFailure) -> int:
        if problem.message:
            log.error(problem.message)
        return problem.exit_code

    def internal_error(self, error: Exception, detail: str) -> int:
        log.error(f"internal error: {detail}")
        return INTERNAL_ERROR


def run(job: Job) -> int:
    """Run `job` through the lifecycle; return the exit code."""
    try:
        log.configure(settings.value("SMSUPER_LOG_LEVEL", job=job.name), settings.value("SMSUPER_LOG_FORMAT"))
    except settings.SettingError:
        pass  # reported by the validation below
    if os.getpid() != 1:
        from . import capabilities

        capabilities.become_subreaper()  # orphans of the workload are ours to reap
    try:
        try:
            job.begin()
            with stop_guard():
                supervisor = _prepare(job)
            job.start_metrics(supervisor)  # before restrict_init: the port may be below 1024
            job.start(supervisor)
        except JobFailure as problem:
            job.cleanup()
            return job.fail(problem)
        except StopRequested as stop:
            job.cleanup()
            return job.fail(JobFailure(f"received {stop} before {job.workload} started",
                                       128 + stop.signum, kind="Stopped"))
        privileges.restrict_init()
        code = supervisor.run()
        job.cleanup()
        return job.finish(code)
    except Exception as error:  # smsuper's own bug: still say why, and still clean up
        import traceback

        detail = traceback.format_exc()
        try:
            job.cleanup()
        except Exception:
            pass
        return job.internal_error(error, detail)


def _prepare(job: Job) -> Supervisor:
    try:
        settings.validate(job.name)
        account = privileges.start_checks(settings.value("SMSUPER_ALLOW_PRIVILEGED"),
                                          settings.value("SMSUPER_USER"), os.environ)
        job.prepare(account)
    except settings.SettingError as error:
        raise JobFailure(str(error), CONFIG_ERROR, kind="SettingError") from None
    except privileges.PrivilegeError as error:
        raise JobFailure(str(error), CONFIG_ERROR, kind="PrivilegeError") from None
    from ..titles import set_title

    set_title(job.title())
    options = job.supervisor_options()
    if job.rewrites_stop:
        options.update(rewrite_stop=settings.value("SMSUPER_STOP_SIGNAL"),
                       success_codes=settings.value("SMSUPER_SUCCESS_EXIT_CODES"))
    job.supervisor = Supervisor(settings.value("SMSUPER_GRACE_PERIOD", job=job.name),
                                stop_signals=job.stop_signals, **options)
    return job.supervisor
