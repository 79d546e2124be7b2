"""`smsuper train`: prepare, run the user's program under the init, report.

The job's steps, in the lifecycle every job shares (init/lifecycle.py):
1. begin: stale outcome files of an earlier run removed;
2. prepare (inside the lifecycle's stop guard, after the settings and the account):
   the four config files, hyperparameters, the code directory, the entry point,
   the SM_* environment, host names; any problem fails the job before anything
   runs; then the model, output and checkpoint directories are handed to the
   workload's user;
3. start: pip first when needed, as root (its exit hook starts the script when
   it succeeded and no stop came meanwhile), else the script at once, as the
   primary child, unprivileged, its stderr relayed and its tail kept for the
   failure file;
4. finish: output/success, or output/failure (unless the script wrote its
   own), and the script's exit code as the container's; cleanup gives the
   directories back to their owners first.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import List, Optional

from .. import log, redact, roles, settings
from ..init import handback, inputs, lifecycle, privileges
from ..init.lifecycle import INTERNAL_ERROR, JobFailure
from ..init.spawn import ChildSpec, SpawnError
from ..sagemaker import configs, hyperparameters, resources
from ..sagemaker.environment import EntryPointFacts, TrainingEnvironment
from ..sagemaker.paths import DEFAULT_BASE_DIR, Paths
from . import distributed, entrypoint, failure, hostwait, launch, outcome, requirements, sourcedir

JOB = "train"
CONFIG_ERROR_CODE = lifecycle.CONFIG_ERROR


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


def prepare(paths: Paths, extra_args: List[str], account: privileges.Workload) -> Prepared:
    """Every decision, before any child exists. Raises JobFailure."""
    try:
        config = configs.load(paths)
    except configs.ConfigError as error:
        raise JobFailure(str(error), CONFIG_ERROR_CODE, kind="ConfigError") from None
    if config.present:
        log.debug(f"read {', '.join(config.present)} from {paths.input_config_dir}")
    hps = hyperparameters.load(config.hyperparameters)

    hp_file = paths.config_file("hyperparameters.json")
    program = _configured("SAGEMAKER_PROGRAM", "sagemaker_program", hps, hp_file)
    submit = _configured("SAGEMAKER_SUBMIT_DIRECTORY", "sagemaker_submit_directory", hps, hp_file)
    framework_module = settings.value("SAGEMAKER_TRAINING_MODULE")
    downloader = None
    if submit and sourcedir.is_remote(submit.value):
        from ..usercode import remote  # only then: PID 1 carries no tarfile otherwise

        downloader = remote.Downloader(account.credentials, account.environ(os.environ),
                                       hps.sagemaker("sagemaker_region"))
    try:
        code = sourcedir.locate(submit.value if submit else None, submit.origin if submit else "",
                                paths.code_dir, downloader)
        if code.remote and not framework_module:
            log.warning(f"{code.note}: looking for the code in {code.path}")
        entry = entrypoint.resolve(program, framework_module, code.path,
                                   os.environ.get("PATH", os.defpath), code.note)
    except sourcedir.SourceDirError as error:
        raise JobFailure(str(error), error.exit_code, kind=error.kind) from None
    except entrypoint.EntryPointError as error:
        raise JobFailure(str(error), error.exit_code, kind=type(error).__name__) from None

    try:
        distributed.refuse_mpi(hps, entry)
    except distributed.DistributionError as error:
        raise JobFailure(str(error), CONFIG_ERROR_CODE, kind="DistributionError") from None

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
        raise JobFailure(str(error), CONFIG_ERROR_CODE, kind="PrivilegeError") from None
    torchrun = distributed.torch_requested(hps, settings.value("SMSUPER_TORCH_DISTRIBUTED"))
    plan = distributed.plan(training.hosts, training.current_host, settings.value("SMSUPER_MASTER_PORT"),
                            torchrun, training.num_gpus)
    if len(training.hosts) > 1:
        try:
            hostwait.wait_for_hosts(training.hosts, settings.value("SMSUPER_HOST_WAIT_TIMEOUT"))
        except hostwait.HostsUnresolved as error:
            raise JobFailure(str(error), INTERNAL_ERROR, kind="HostsUnresolved") from None

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


def _report_failure(paths: Paths, summary_head: Optional[str], status: str, lines: List[str],
                    before: outcome.Snapshot) -> None:
    summary = failure.compose(summary_head, status, lines)
    log.error("training failed: " + summary.split("\nstderr (last lines):", 1)[0])
    outcome.write_failure(paths, failure.failure_text(summary, lines), before)


class TrainJob(lifecycle.Job):
    name = JOB
    workload = "the training program"

    def __init__(self, args: List[str]):
        self.args = list(args)
        try:
            base_dir = settings.value("SAGEMAKER_BASE_DIR")
        except settings.SettingError:
            base_dir = DEFAULT_BASE_DIR  # the validation reports the bad setting through the failure file
        self.paths = Paths(base_dir)
        self.before: Optional[outcome.Snapshot] = None
        self.prepared: Optional[Prepared] = None
        self.script_tail = failure.StderrTail()
        self.pip_tail = failure.StderrTail()
        self.log_metrics = None  # metrics.training.LogMetrics: the user's metrics, parsed from the script's output
        self.spawn_problem: Optional[SpawnError] = None
        self.pip_child = None
        self.script = None

    # ---- the lifecycle's steps ----------------------------------------------------
    def begin(self) -> None:
        outcome.remove_stale(self.paths)
        self.before = outcome.snapshot(self.paths.failure_file)

    def prepare(self, account: privileges.Workload) -> None:
        self.prepared = prepare(self.paths, self.args, account)
        _prepare_places(self.prepared)

    def title(self) -> str:
        return f"smsuper: train [{self.prepared.entry.name}]"

    def start_metrics(self, supervisor) -> None:
        from .. import metrics
        from ..metrics import training

        self.log_metrics = training.LogMetrics(settings.value("SMSUPER_METRIC_DEFINITIONS"))
        metrics.start(supervisor, [training.collector(supervisor, self.log_metrics)])

    def start(self, supervisor) -> None:
        install = self.prepared.install
        if install is None:
            self._start_script()
            return
        log.info(f"installing with {install.what} in {install.cwd}")
        try:
            # As root, as the image's own installs: the script only ever runs unprivileged.
            self.pip_child = supervisor.start(ChildSpec(role=roles.PIP, argv=install.argv, env=install.env,
                                                        cwd=install.cwd, relay=True, on_stderr=self.pip_tail.feed,
                                                        on_exit=self._pip_exited))
        except SpawnError as error:
            raise JobFailure(f"{install.what} could not start: {error.message}", error.exit_code,
                             kind="InstallError") from None

    def cleanup(self) -> None:
        prepared = self.prepared
        if prepared is None:
            return
        prepared.account.cleanup()
        if prepared.handover is not None:
            # Model, output and checkpoints belong to their owners again (before output/failure is written).
            handover, prepared.handover = prepared.handover, None
            handover.give_back(prepared.account.credentials.uid)

    def finish(self, code: int) -> int:
        paths, before, launch_ = self.paths, self.before, self.prepared.launch
        if self.spawn_problem is not None:
            problem = self.spawn_problem
            _report_failure(paths, f"SpawnError: cannot start {launch_.name}: {problem.message}",
                            f"exit code {problem.exit_code}.", [], before)
            return problem.exit_code
        pip = self.pip_child
        if pip is not None and pip.status is not None and pip.status.code != 0:
            install = self.prepared.install
            lines = failure.clean_lines(self.pip_tail.data())
            headline = failure.pip_error_line(lines) or f"{install.what} failed"
            status = failure.status_sentence(install.what, pip.status.code, pip.status.signal)
            _report_failure(paths, f"InstallError: {headline}",
                            status + " The training program did not run.", lines, before)
            return pip.status.code
        script = self.script
        if script is None or script.status is None:
            # Stopped before the script started (a stop during pip install).
            _report_failure(paths, None, f"the job was stopped before {launch_.name} started.", [], before)
            return code or 143
        if code == 0:
            outcome.write_success(paths)
            log.info(f"{launch_.name} completed")
            return 0
        lines = failure.clean_lines(self.script_tail.data())
        status = failure.status_sentence(launch_.name, script.status.code, script.status.signal)
        _report_failure(paths, failure.exception_line(lines), status, lines, before)
        return code

    def fail(self, problem: JobFailure) -> int:
        log.error(f"{problem.kind}: {problem.message}")
        status = f"smsuper exited with code {problem.exit_code} before starting the training program."
        outcome.write_failure(self.paths, failure.failure_text(
            failure.compose(f"{problem.kind}: {problem.message}", status, []), []), self.before)
        return problem.exit_code

    def internal_error(self, error: Exception, detail: str) -> int:
        log.error(f"internal error: {detail}")
        outcome.write_failure(self.paths, failure.failure_text(failure.compose(
            f"smsuper internal error: {type(error).__name__}: {error}",
            f"exit code {INTERNAL_ERROR}.", detail.splitlines()), detail.splitlines()), self.before)
        return INTERNAL_ERROR

    # ---- the children -------------------------------------------------------------
    def _start_script(self) -> None:
        launch_, account = self.prepared.launch, self.prepared.account
        log_metrics = self.log_metrics

        def script_stderr(chunk: bytes) -> None:
            self.script_tail.feed(chunk)
            log_metrics.feed(chunk)

        spec = ChildSpec(role=roles.SCRIPT, argv=launch_.argv, env=account.environ(launch_.env), cwd=launch_.cwd,
                         credentials=account.credentials, relay=True, on_stdout=log_metrics.feed,
                         on_stderr=script_stderr)
        log.info(f"running {launch_.name}: {shlex.join(redact.argv(launch_.argv))}")
        if log.enabled("debug"):
            shown = redact.environ(spec.env or {})
            log.debug("the training program's environment:\n" + "\n".join(f"{k}={v}" for k, v in sorted(shown.items())))
        try:
            self.script = self.supervisor.start(spec, primary=True)
        except SpawnError as error:
            self.spawn_problem = error
            self.supervisor.shutdown(f"{launch_.name} could not start", exit_code=error.exit_code)

    def _pip_exited(self, child, status) -> None:
        if status.code == 0 and not self.supervisor.stopping:
            self._start_script()


def main(args: List[str]) -> int:
    return lifecycle.run(TrainJob(args))
