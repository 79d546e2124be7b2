"""`smsuper train`: prepare, run the user's program under the init, report.

1. prepare (guarded against an early stop): settings, a privileged container
   refused, the workload's account (SMSUPER_USER), the four config files,
   hyperparameters, the code directory, the entry point, the SM_* environment,
   host names; any problem fails the job before anything runs; then the model,
   output and checkpoint directories are handed to the workload's user;
2. run under one supervisor: pip first when needed, as root (its success
   starts the script, from the supervisor's exit callback, so a stop during
   the install never starts the script), then the script as the primary
   child, unprivileged, its stderr relayed and its tail kept for the failure
   file; PID 1 drops the capabilities it no longer needs once a child runs;
3. report: output/success, or output/failure (unless the script wrote its
   own), and the script's exit code as the container's.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from .. import log, redact, settings
from ..init import handback, inputs, privileges
from ..sagemaker import configs, hyperparameters, resources
from ..sagemaker.environment import EntryPointFacts, TrainingEnvironment
from ..sagemaker.paths import DEFAULT_BASE_DIR, Paths
from ..usercode import remote
from . import distributed, entrypoint, failure, hostwait, launch, outcome, requirements, sourcedir
from .stopguard import StopRequested, stop_guard

DEFAULT_GRACE_PERIOD = 110.0  # the platform's SIGKILL comes 120 s after SIGTERM
CONFIG_ERROR_CODE = 2
INTERNAL_ERROR_CODE = 1


class JobFailure(Exception):
    """The job cannot run; `kind` heads the failure reason, `exit_code` ends the job."""

    def __init__(self, kind: str, message: str, exit_code: int):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.exit_code = exit_code


@dataclass
class Prepared:
    entry: entrypoint.EntryPoint
    launch: launch.Launch
    install: Optional[requirements.Install]
    training: TrainingEnvironment
    account: privileges.Workload
    writable_dirs: List[str] = field(default_factory=list)
    handover: Optional[handback.Handover] = None  # given back to the directories' owners after the job


def _python() -> str:
    return sys.executable or "python3"


def _configured(setting: str, hyperparameter: str, hps: hyperparameters.Hyperparameters,
                config_path: str) -> Optional[entrypoint.Configured]:
    value = settings.value(setting)
    if value:
        return entrypoint.Configured(value, setting)
    from_hp = hps.sagemaker(hyperparameter)
    if from_hp not in (None, ""):
        return entrypoint.Configured(str(from_hp), f"the {hyperparameter} hyperparameter in {config_path}")
    return None


def _inputs(paths: Paths, entry: entrypoint.EntryPoint, training: TrainingEnvironment) -> List[str]:
    """What the script reads: the config, every channel, its code (init/inputs.py checks them)."""
    return [paths.input_config_dir, paths.input_data_dir, *training.channel_input_dirs.values(),
            entry.code_dir or entry.target]


def prepare(paths: Paths, extra_args: List[str]) -> Prepared:
    """Every decision, before any child exists. Raises JobFailure."""
    try:
        settings.validate("train")
    except settings.SettingError as error:
        raise JobFailure("SettingError", str(error), CONFIG_ERROR_CODE) from None
    try:
        account = privileges.start_checks(settings.value("SMSUPER_ALLOW_PRIVILEGED"), settings.value("SMSUPER_USER"),
                                          os.environ)
    except privileges.PrivilegeError as error:
        raise JobFailure("PrivilegeError", str(error), CONFIG_ERROR_CODE) from None
    try:
        config = configs.load(paths)
    except configs.ConfigError as error:
        raise JobFailure("ConfigError", str(error), CONFIG_ERROR_CODE) from None
    if config.present:
        log.debug(f"read {', '.join(config.present)} from {paths.input_config_dir}")
    hps = hyperparameters.load(config.hyperparameters)

    hp_file = paths.config_file("hyperparameters.json")
    program = _configured("SAGEMAKER_PROGRAM", "sagemaker_program", hps, hp_file)
    submit = _configured("SAGEMAKER_SUBMIT_DIRECTORY", "sagemaker_submit_directory", hps, hp_file)
    framework_module = settings.value("SAGEMAKER_TRAINING_MODULE")
    try:
        code = sourcedir.locate(submit.value if submit else None, submit.origin if submit else "",
                                paths.code_dir, remote.Downloader(account.credentials, account.environ(os.environ),
                                                                  hps.sagemaker("sagemaker_region")))
        if code.remote and not framework_module:
            log.warning(f"{code.note}: looking for the code in {code.path}")
        entry = entrypoint.resolve(program, framework_module, code.path,
                                   os.environ.get("PATH", os.defpath), code.note)
    except sourcedir.SourceDirError as error:
        raise JobFailure(error.kind, str(error), error.exit_code) from None
    except entrypoint.EntryPointError as error:
        raise JobFailure(type(error).__name__, str(error), error.exit_code) from None

    try:
        distributed.refuse_mpi(hps, entry)
    except distributed.DistributionError as error:
        raise JobFailure("DistributionError", str(error), CONFIG_ERROR_CODE) from None

    log_level = hps.sagemaker("sagemaker_container_log_level")
    training = TrainingEnvironment(
        paths=paths,
        config=config,
        hyperparameters=hps,
        entry_point=EntryPointFacts(user_entry_point=entry.configured,
                                    module_dir=entry.code_dir or os.path.dirname(entry.target),
                                    framework_module=framework_module),
        log_level=int(log_level) if isinstance(log_level, int) else settings.value("SAGEMAKER_CONTAINER_LOG_LEVEL"),
        num_cpus=resources.cpu_count(),
        num_gpus=resources.gpu_count(),
        checkpoint_dir=configs.checkpoint_dir(config, paths),
        job_name=os.environ.get("TRAINING_JOB_NAME"),
    )
    try:
        account = inputs.choose(account, _inputs(paths, entry, training),
                                explicit=bool(os.environ.get(privileges.USER_SETTING, "").strip()))
    except privileges.PrivilegeError as error:
        raise JobFailure("PrivilegeError", str(error), CONFIG_ERROR_CODE) from None
    torchrun = distributed.torch_requested(hps, settings.value("SMSUPER_TORCH_DISTRIBUTED"))
    plan = distributed.plan(training.hosts, training.current_host, settings.value("SMSUPER_MASTER_PORT"),
                            torchrun, training.num_gpus)
    if len(training.hosts) > 1:
        try:
            hostwait.wait_for_hosts(training.hosts, settings.value("SMSUPER_HOST_WAIT_TIMEOUT"))
        except hostwait.HostsUnresolved as error:
            raise JobFailure("HostsUnresolved", str(error), INTERNAL_ERROR_CODE) from None

    python = _python()
    return Prepared(
        entry=entry,
        launch=launch.build(entry, training, plan, python, os.environ, extra_args),
        install=requirements.plan(entry, python, settings.value("SMSUPER_INSTALL_REQUIREMENTS"), os.environ),
        training=training,
        account=account,
        writable_dirs=list(paths.script_writable_dirs(training.checkpoint_dir)),
    )


def _prepare_places(prepared: Prepared) -> None:
    """Before the switch: the script's writable directories become its user's
    (checkpoints with their contents: a resumed run overwrites them), and a
    HOME it can write. Problems are warnings: the script may never write there."""
    from ..init import writable

    account = prepared.account
    if account.owner is not None:
        prepared.handover = handback.Handover(prepared.writable_dirs)
    for problem in writable.prepare(prepared.writable_dirs, account,
                                    recursive=[prepared.training.checkpoint_dir]):
        log.warning(problem)
    if prepared.handover is not None:
        prepared.handover.handed()
    prepared.account = account.with_home()


def _give_back(prepared: Optional[Prepared]) -> None:
    """Model, output and checkpoints belong to their owners again (before output/failure is written)."""
    if prepared is not None and prepared.handover is not None:
        handover, prepared.handover = prepared.handover, None
        handover.give_back(prepared.account.credentials.uid)


def _report_failure(paths: Paths, summary_head: Optional[str], status: str, lines: List[str],
                    before: outcome.Snapshot) -> None:
    summary = failure.compose(summary_head, status, lines)
    log.error("training failed: " + summary.split("\nstderr (last lines):", 1)[0])
    outcome.write_failure(paths, failure.failure_text(summary, lines), before)


def _fail_early(paths: Paths, problem: JobFailure, before: outcome.Snapshot) -> int:
    log.error(f"{problem.kind}: {problem.message}")
    status = f"smsuper exited with code {problem.exit_code} before starting the training program."
    outcome.write_failure(paths, failure.failure_text(
        failure.compose(f"{problem.kind}: {problem.message}", status, []), []), before)
    return problem.exit_code


def _supervise(paths: Paths, prepared: Prepared, supervisor, before: outcome.Snapshot) -> int:
    from ..init.spawn import ChildSpec, SpawnError

    script_tail = failure.StderrTail()
    pip_tail = failure.StderrTail()
    spawn_problem: List[SpawnError] = []
    launch_ = prepared.launch
    account = prepared.account
    log_metrics = _start_metrics(supervisor)

    def script_stderr(chunk: bytes) -> None:
        script_tail.feed(chunk)
        log_metrics.feed(chunk)

    script_spec = ChildSpec(role="script", argv=launch_.argv, env=account.environ(launch_.env), cwd=launch_.cwd,
                            credentials=account.credentials, relay=True, on_stdout=log_metrics.feed,
                            on_stderr=script_stderr)

    def start_script() -> None:
        log.info(f"running {launch_.name}: {shlex.join(redact.argv(launch_.argv))}")
        if log.enabled("debug"):
            shown = redact.environ(script_spec.env or {})
            log.debug("the training program's environment:\n" + "\n".join(f"{k}={v}" for k, v in sorted(shown.items())))
        try:
            supervisor.start(script_spec, primary=True)
        except SpawnError as error:
            spawn_problem.append(error)
            supervisor.shutdown(f"{launch_.name} could not start", exit_code=error.exit_code)

    def on_exit(child, status) -> None:
        if child.spec.role == "pip" and status.code == 0 and not supervisor.stopping:
            start_script()

    supervisor.on_exit = on_exit
    pip_child = None
    if prepared.install is not None:
        install = prepared.install
        log.info(f"installing with {install.what} in {install.cwd}")
        try:
            # As root, as the image's own installs: the script only ever runs unprivileged.
            pip_child = supervisor.start(ChildSpec(role="pip", argv=install.argv, env=install.env,
                                                   cwd=install.cwd, relay=True, on_stderr=pip_tail.feed))
        except SpawnError as error:
            raise JobFailure("InstallError", f"{install.what} could not start: {error.message}",
                             error.exit_code) from None
    else:
        start_script()
    privileges.restrict_init()
    code = supervisor.run()
    account.cleanup()
    _give_back(prepared)

    if spawn_problem:
        problem = spawn_problem[0]
        _report_failure(paths, f"SpawnError: cannot start {launch_.name}: {problem.message}",
                        f"exit code {problem.exit_code}.", [], before)
        return problem.exit_code
    if pip_child is not None and pip_child.status is not None and pip_child.status.code != 0:
        lines = failure.clean_lines(pip_tail.data())
        headline = failure.pip_error_line(lines) or f"{prepared.install.what} failed"
        status = failure.status_sentence(prepared.install.what, pip_child.status.code, pip_child.status.signal)
        _report_failure(paths, f"InstallError: {headline}",
                        status + " The training program did not run.", lines, before)
        return pip_child.status.code
    script = next((c for c in supervisor.children if c.spec.role == "script"), None)
    if script is None or script.status is None:
        # Stopped before the script started (a stop during pip install).
        _report_failure(paths, None, f"the job was stopped before {launch_.name} started.", [], before)
        return code or 143
    if code == 0:
        outcome.write_success(paths)
        log.info(f"{launch_.name} completed")
        return 0
    lines = failure.clean_lines(script_tail.data())
    status = failure.status_sentence(launch_.name, script.status.code, script.status.signal)
    _report_failure(paths, failure.exception_line(lines), status, lines, before)
    return code


def _start_metrics(supervisor):
    """PID 1's metrics endpoint (before PID 1 drops its capabilities); returns the log-line parser."""
    from ..metrics import training

    log_metrics = training.LogMetrics(settings.value("SMSUPER_METRIC_DEFINITIONS"))
    from .. import metrics

    metrics.start(supervisor, [training.collector(supervisor, log_metrics)])
    return log_metrics


def _set_title(name: str) -> None:
    try:
        from ..titles import set_title
    except ImportError:
        return
    set_title(f"smsuper: train [{name}]")


def main(args: List[str]) -> int:
    try:
        base_dir = settings.value("SAGEMAKER_BASE_DIR")
    except settings.SettingError:
        base_dir = DEFAULT_BASE_DIR  # prepare() reports the bad setting through the failure file
    paths = Paths(base_dir)
    try:
        log.configure(settings.value("SMSUPER_LOG_LEVEL"), settings.value("SMSUPER_LOG_FORMAT"))
    except settings.SettingError:
        pass  # reported by prepare()'s validation
    outcome.remove_stale(paths)
    before = outcome.snapshot(paths.failure_file)
    if os.getpid() != 1:
        from ..init import capabilities

        capabilities.become_subreaper()  # orphans of the script are ours to reap
    prepared: Optional[Prepared] = None
    try:
        with stop_guard():
            prepared = prepare(paths, list(args))
            _prepare_places(prepared)
            _set_title(prepared.entry.name)
            from ..init.supervisor import Supervisor

            grace = settings.value("SMSUPER_GRACE_PERIOD")
            supervisor = Supervisor(DEFAULT_GRACE_PERIOD if grace is None else grace,
                                    rewrite_stop=settings.value("SMSUPER_STOP_SIGNAL"),
                                    success_codes=settings.value("SMSUPER_SUCCESS_EXIT_CODES"))
        return _supervise(paths, prepared, supervisor, before)
    except JobFailure as problem:
        _give_back(prepared)
        return _fail_early(paths, problem, before)
    except StopRequested as stop:
        _give_back(prepared)
        return _fail_early(paths, JobFailure("Stopped", f"received {stop} before the training program "
                                                        "started", 128 + stop.signum), before)
    except Exception as error:  # smsuper's own bug: still leave a reason behind
        import traceback

        detail = traceback.format_exc()
        log.error(f"internal error: {detail}")
        _give_back(prepared)
        outcome.write_failure(paths, failure.failure_text(failure.compose(
            f"smsuper internal error: {type(error).__name__}: {error}",
            f"exit code {INTERNAL_ERROR_CODE}.", detail.splitlines()), detail.splitlines()), before)
        return INTERNAL_ERROR_CODE
