"""`smsuper serve`: nginx in front of gunicorn, both supervised by PID 1.

The job's steps, in the lifecycle every job shares (init/lifecycle.py):
1. prepare: the serving config, resolved once (config.py), then the handler module
   (a missing one fails the job at once: nothing could ever serve), the account
   that can read the model, and the private runtime directory;
2. start: pip install of requirements.txt as a supervised child first, when there
   is one; its exit hook starts the servers when it succeeded (so a stop during
   the install never starts them); then gunicorn, handed the config whole, and
   nginx, with its nginx.conf and the access-log FIFO;
3. each server's own exit hook cleans up after it (readiness files, orphaned
   nginx workers); the supervisor restarts either one with backoff when it dies, and stops
   everything with a non-zero exit and a clear reason when one keeps dying.
   SIGTERM, SIGINT or SIGQUIT: nginx gets SIGQUIT and finishes what it holds,
   the gunicorn master gets SIGTERM, keeps serving until nginx is gone and then
   stops its workers (master/gunicorn_app.py); on SIGINT or SIGQUIT it would quit at once.
   SIGHUP reaches both as a graceful reload: new nginx and gunicorn workers
   start, the old ones finish what they hold.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

from .. import log, roles, selfcmd
from ..init import capabilities, inputs, lifecycle, privileges, procfs, untrusted
from ..init.lifecycle import JobFailure
from ..init.spawn import ChildSpec, Credentials, SpawnError
from ..metrics import port as metrics_port
from . import nginx, readiness, requirements
from . import runtime as runtime_dir
from .access_log import AccessLogRelay
from .config import JOB, ServeConfig, default_workers, resolve
from .program import HandlerError, code_directories, locate

SERVE_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
# nginx only shuffles bytes: one process per two CPUs (at most 4) outruns any Python model, and
# leaves the CPUs to the workers.
MAX_NGINX_WORKERS = 4


def _names(uid: int, gid: int) -> Tuple[str, str]:
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return user, group


def _nginx_credentials(credentials: Credentials) -> Credentials:
    """A root nginx master (SMSUPER_USER=root) calls setgroups() in every worker it
    starts, whatever its `user` directive: that one capability it keeps."""
    if credentials.uid != 0:
        return credentials
    return Credentials(0, credentials.gid, credentials.groups,
                       keep_capabilities=capabilities.mask(capabilities.CAP_SETGID))


def _adopted_group(group: int) -> bool:
    """Whether process group `group` has members and all of them are PID 1's own children."""
    members = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = procfs.stat_fields(int(name))
        if fields is not None and len(fields) > 2 and int(fields[2]) == group:
            if int(fields[1]) != os.getpid():
                return False
            members += 1
    return members > 0


class ServeJob(lifecycle.Job):
    name = JOB
    workload = "the model server"
    # SIGQUIT too is a stop here (a forwarded one would make gunicorn drop what it holds);
    # each server then gets the signal that drains it (the specs' stop_signal).
    stop_signals = SERVE_STOP_SIGNALS
    rewrites_stop = False  # nginx and gunicorn always get the signal that drains them

    def __init__(self, args: List[str]):
        self.args = args
        self.config: ServeConfig
        self.code_dir: Optional[str] = None
        self.account: Optional[privileges.Workload] = None
        self.runtime: Optional[runtime_dir.RuntimeDir] = None
        self.metrics_port: Optional[int] = None
        self.metrics_dir: Optional[str] = None  # set once the metrics endpoint listens
        self.exporter = None  # metrics.Exporter, while the endpoint listens
        self.stub_status = False
        self.access_log: Optional[AccessLogRelay] = None
        self.responses = None  # metrics.responses.ResponseCounts, fed by the access log, when metrics are on
        self.start_failure: Optional[SpawnError] = None
        self.multi_model = None  # multimodel.endpoint.MultiModelEndpoint with SAGEMAKER_MULTI_MODEL=true

    # ---- the lifecycle's steps ----------------------------------------------------
    def begin(self) -> None:
        if self.args:
            raise JobFailure(f"serve takes no arguments (got {' '.join(self.args)}): configure it with "
                             f"environment variables")

    def prepare(self, account: privileges.Workload) -> None:
        config = self.config = resolve()
        if config.multi_model and (config.app or not nginx.find(config.nginx)):
            raise JobFailure("SAGEMAKER_MULTI_MODEL=true needs nginx (SMSUPER_NGINX) and handler functions (each "
                             "model's code/inference.py, or the image's), not SMSUPER_APP")
        self.metrics_port = metrics_port.choose(config.port)  # a clash with the serving port stops the job (exit 2)
        if config.submit_directory.startswith("s3://"):  # a framework model deployed with source_dir
            from ..usercode import remote  # only then: PID 1 carries no tarfile otherwise

            stop = remote.for_serving(config.submit_directory, config.base_dir, account.credentials,
                                      account.environ(os.environ))
            if stop is not None:
                raise JobFailure("", stop)  # remote said why
        if not config.app:
            try:
                self.code_dir = os.path.dirname(locate(config.program, code_directories(config.base_dir,
                                                                                        config.submit_directory)))
            except HandlerError as error:
                if not config.multi_model:
                    raise JobFailure(str(error)) from None
                # Each model may bring its own code/inference.py; the image need not have one.
                log.info(f"no handler module {config.program} in the image: each model needs its own "
                         f"code/{config.program}")
        # The model may arrive in a 0700 directory (the SDK extracts it into one): never start a
        # server whose model_fn could not read it (init/inputs.py).
        account = inputs.choose(account, [config.model_dir, self.code_dir or ""],
                                explicit=bool(os.environ.get(privileges.USER_SETTING, "").strip()))
        try:  # once the account is known: its user must reach the runtime directory
            runtime_root = runtime_dir.choose(config.runtime_dir, account)
        except runtime_dir.RuntimeDirError as error:
            raise JobFailure(str(error)) from None
        multi = config.multi_model
        log.info(f"serving on port {config.port}{' (multi-model endpoint)' if multi else ''}: "
                 f"{config.workers} worker(s){' per model' if multi else ''}"
                 f"{f' x {config.worker_threads} threads' if config.worker_threads > 1 else ''}, "
                 f"{f'batching up to {config.batch_size} requests within {config.batch_delay * 1000:g} ms, ' if config.batching else ''}"
                 f"timeout {config.timeout} s, "
                 f"{'app ' + config.app if config.app else 'handlers from ' + str(self.code_dir or 'each model')}"
                 f"{' (each model: its own code/ first)' if multi and self.code_dir else ''}")
        # nginx and gunicorn run as SMSUPER_USER (init/privileges.py); the runtime directory is theirs.
        self.credentials = account.credentials
        self.owner = account.owner
        self.runtime = runtime_dir.create(runtime_root, self.owner)
        self.account = account.with_home(self.runtime.root)
        # The servers chdir (gunicorn) or start (nginx) here: a place their user can be.
        self.cwd = runtime_dir.reachable_cwd(account, self.code_dir, self.runtime)
        if self.cwd is not None:
            log.info(f"the servers start in {self.cwd}: smsuper's working directory cannot be reached by "
                     f"{account.describe()}")
        self.nginx_binary = nginx.find(config.nginx)
        if config.multi_model:
            from .multimodel.endpoint import MultiModelEndpoint

            self.multi_model = MultiModelEndpoint(self)

    def title(self) -> str:
        return "smsuper: init [serve]"

    def supervisor_options(self) -> Dict[str, Any]:
        return {"restart_limit": self.config.restart_limit, "restart_window": self.config.restart_window}

    def cleanup(self) -> None:
        if self.account is not None:
            self.account.cleanup()
        if self.access_log is not None:
            self.access_log.close()
        if self.runtime is not None and not self.config.runtime_dir:  # a directory of our own
            runtime_dir.remove(self.runtime)

    # ---- the children -------------------------------------------------------------
    def _gunicorn_spec(self) -> ChildSpec:
        if self.nginx_binary:
            bind, drain = f"unix:{self.runtime.socket}", ["--nginx-pidfile", self.runtime.nginx_pid]
        else:
            bind, drain = f"0.0.0.0:{self.config.port}", []
        argv = selfcmd.self_argv("_gunicorn", "--runtime-dir", self.runtime.root, "--bind", bind, *drain)
        if self.metrics_dir:
            argv += ["--metrics-dir", self.metrics_dir]
        env = self.config.handed_over(self.account.environ(dict(os.environ, PYTHONUNBUFFERED="1")))
        return ChildSpec(role=roles.GUNICORN, argv=argv, env=env, cwd=self.cwd, credentials=self.credentials,
                         relay=True, stop_signal=signal.SIGTERM, restart=True, on_exit=self._gunicorn_exited)

    def _nginx_spec(self) -> ChildSpec:
        assert self.nginx_binary
        version = nginx.version(self.nginx_binary)
        uid, gid = self.owner or (os.geteuid(), os.getegid())
        as_root = _names(uid, gid) if uid == 0 else None
        workers = max(1, min(MAX_NGINX_WORKERS, default_workers() // 2))
        if self.exporter is not None and not self.stub_status and nginx.has_stub_status(self.nginx_binary):
            # Asked here, after gunicorn started (the same `nginx -V` as the version above), not
            # before: the gunicorn master's start-up is the long pole of the first /ping 200.
            from ..metrics import nginx_status

            self.stub_status = True
            self.exporter.collectors.append(nginx_status.collector(self.runtime.nginx_status))
        try:
            with open(self.runtime.nginx_conf, "w") as handle:
                handle.write(nginx.render(self.config, self.runtime, version, workers, as_root,
                                          stub_status=self.stub_status, multi_model=self.multi_model is not None))
        except OSError as error:  # a failed write() or close() names no file: say which
            raise OSError(error.errno, error.strerror, self.runtime.nginx_conf) from None
        self._remove_status_socket()
        self.access_log = AccessLogRelay(self.runtime.access_log, self.owner, self.config.log_format == "json",
                                         counts=self.responses, log_ping=self.config.log_ping,
                                         per_model=self.multi_model.manager.request_done if self.multi_model else None)
        self.supervisor.add_reader(self.access_log.fd, self.access_log.pump)
        return ChildSpec(role=roles.NGINX, argv=nginx.argv(self.nginx_binary, self.runtime, version), cwd=self.cwd,
                         credentials=_nginx_credentials(self.credentials), relay=True, stop_signal=signal.SIGQUIT,
                         restart=True, on_exit=self._nginx_exited)

    def start_metrics(self, supervisor) -> None:
        """PID 1's endpoint, fed by gunicorn's multiprocess files and nginx's stub_status."""
        if self.metrics_port is None:
            return
        from .. import metrics
        from ..metrics import multiproc, serving_state

        directory = self.runtime.metrics_dir
        multiproc.prepare(directory, self.owner)
        collectors = [multiproc.collector(directory), serving_state.collector(self.runtime, self.config)]
        if self.multi_model:
            collectors.append(self.multi_model.manager.collect)
        if self.nginx_binary:
            # What clients got, from nginx's access log; the workers then count nothing themselves.
            from ..metrics.responses import ResponseCounts

            self.responses = ResponseCounts()
            collectors.append(self.responses.collect)
        self.exporter = metrics.start(self.supervisor, collectors, listen_port=self.metrics_port)
        if self.exporter is not None:
            self.metrics_dir = directory

    def _remove_status_socket(self) -> None:
        # A killed nginx leaves its unix socket behind, and the next one could not bind it.
        # (unlink never follows the last component, and the shared directory's place is PID 1's.)
        try:
            os.unlink(self.runtime.nginx_status)
        except OSError:
            pass

    def _readiness(self, action, *args) -> None:
        """A readiness chore of PID 1: a full disk or a file the workload broke costs /ping's
        explanation, never the loop (the servers' own markers still say whether one can serve)."""
        try:
            action(self.runtime, *args)
        except OSError as error:
            log.warning(f"could not update the readiness files in {self.runtime.shared} ({action.__name__}): "
                        f"{error.strerror or error}")

    def start_servers(self) -> None:
        if not self.nginx_binary:
            log.warning(f"no nginx found (SMSUPER_NGINX={self.config.nginx}): gunicorn binds port "
                        f"{self.config.port} itself. /ping then goes to the workers and can wait behind "
                        f"predictions, and a request past the timeout loses its connection instead of a 504")
        try:
            if self.multi_model:  # nginx in front of PID 1's /models API; each model brings its own gunicorn
                self.multi_model.start()
                self.supervisor.start(self._nginx_spec())
                self.multi_model.serving()
                return
            self.supervisor.start(self._gunicorn_spec())
            if self.nginx_binary:
                self.supervisor.start(self._nginx_spec())
        except SpawnError as error:
            self.start_failure = error
            log.error(f"cannot start the model server: {error.message}")
            self.supervisor.shutdown("a server could not start", exit_code=error.exit_code)
        except OSError as error:  # nginx.conf or the access-log FIFO: a full or read-only runtime disk
            log.error(f"cannot start the model server: {error.filename or self.runtime.root}: "
                      f"{error.strerror or error}. Free space there, or set SMSUPER_RUNTIME_DIR to another place")
            self.supervisor.shutdown("the runtime directory is not usable", exit_code=1)

    def start(self, supervisor) -> None:
        self._readiness(readiness.reset)
        self._readiness(readiness.write_status, "starting", "the model server is starting")
        install = requirements.plan(self.code_dir, self.config.install_requirements,
                                    os.environ) if self.code_dir else None
        if install is None:
            self.start_servers()
            return
        argv, env = install
        self._readiness(readiness.write_status, "starting", "installing requirements.txt")
        log.info(f"installing {os.path.join(self.code_dir or '', requirements.REQUIREMENTS_FILE)}")
        try:
            self.supervisor.start(ChildSpec(role=roles.PIP, argv=argv, env=env, cwd=self.code_dir, relay=True,
                                            on_exit=self._pip_exited))
        except SpawnError as error:
            log.error(f"cannot run pip to install requirements.txt: {error.message}")
            self.supervisor.shutdown("pip could not start", exit_code=error.exit_code)

    # ---- the children's exits ------------------------------------------------------
    def _pip_exited(self, child, status) -> None:
        if self.supervisor.stopping:
            return
        if status.code == 0:
            self.start_servers()
        else:
            log.error(f"pip install -r requirements.txt failed ({status.describe()}): the model server "
                      f"does not start")
            self.supervisor.shutdown("requirements could not be installed", exit_code=status.code or 1)

    def _gunicorn_exited(self, child, status) -> None:
        # No worker of the dead master can serve any more (they get SIGTERM as it dies).
        self._readiness(readiness.clear)
        if not self.supervisor.stopping:
            self._readiness(readiness.write_status, "restarting",
                            f"the model server exited ({status.describe()}) and is restarting")

    def _nginx_exited(self, child, status) -> None:
        self._stop_orphaned_nginx_workers()
        self._remove_status_socket()

    def _stop_orphaned_nginx_workers(self) -> None:
        """nginx workers outlive a killed master and keep the port: ask them to finish and go.

        Their group's id comes from nginx's pid file, which the workload could fill with
        any number: the group is signalled only when every member is an orphan PID 1
        adopted (a worker of the dead master), never a process of anyone else."""
        try:
            group = int(untrusted.read_regular(self.runtime.nginx_pid, 32).strip() or 0)
        except (OSError, ValueError):
            return
        if group > 1 and _adopted_group(group):
            try:
                os.killpg(group, signal.SIGQUIT)
            except (ProcessLookupError, PermissionError):
                pass


def main(args: List[str]) -> int:
    return lifecycle.run(ServeJob(args))
