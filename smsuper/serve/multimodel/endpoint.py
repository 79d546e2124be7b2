"""What the serve job does differently with SAGEMAKER_MULTI_MODEL=true (PID 1).

Instead of one gunicorn master, PID 1 starts nginx and its management API
(api.py); models come and go through it (manager.py). /ping is nginx's own
200 once it runs: the server is alive and able to load, whatever any one model
does (a model that fails or dies costs its own requests only).
"""

from __future__ import annotations

import os
import signal

from ... import roles, selfcmd
from ...init.spawn import ChildSpec
from .. import readiness
from . import layout
from .api import ManagementServer
from .manager import Manager
from .template import Template

MIB = 1024 * 1024


class MultiModelEndpoint:
    def __init__(self, job):
        self.job = job
        config = job.config
        # The supervisor is the job's once the lifecycle made it (start).
        self.manager = Manager(None, job.runtime, self._spec, job.owner, config.workers,
                               config.model_memory_margin_mb * MIB, unload_timeout=2 * config.worker_timeout + 10)
        self.server = None
        self.template = Template()

    def _spec(self, name: str, url: str, model_runtime) -> ChildSpec:
        job = self.job
        argv = selfcmd.self_argv("_model", "--runtime-dir", model_runtime.root, "--bind",
                                 f"unix:{layout.model_socket(job.runtime, name)}", "--name", name, "--url", url,
                                 "--nginx-pidfile", job.runtime.nginx_pid)
        return ChildSpec(role=f"{roles.MODEL} {name}", argv=argv, env=self._env(), cwd=job.cwd,
                         credentials=job.credentials, relay=True, stop_signal=signal.SIGTERM,
                         on_exit=self.manager.child_exited, spawner=self.template.spawn)

    def _env(self):
        # The serving config travels whole, as to the single-model gunicorn master; the template
        # gets the same, so a forked master finds what one started afresh would.
        job = self.job
        return job.config.handed_over(job.account.environ(dict(os.environ, PYTHONUNBUFFERED="1")))

    def start(self) -> None:
        """Before nginx starts: the models' directory and the API it proxies to."""
        self.manager.supervisor = self.job.supervisor
        self.manager.prepare()
        self.server = ManagementServer(self.job.supervisor, layout.management_socket(self.job.runtime),
                                       self.job.owner, self.manager)
        self.job.supervisor.on_stop = self.manager.stopping
        self.template.start(self.job.supervisor, self._env(), self.job.cwd, self.job.credentials)

    def serving(self) -> None:
        """nginx runs: /ping passes."""
        self.job._readiness(readiness.mark_ready, os.getpid())

