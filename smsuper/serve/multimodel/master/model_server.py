"""One model's gunicorn master (`python smsuper.pyz _model ...`), started by PID 1 for POST /models.

The model is loaded here, once, before gunicorn forks its workers (they share
its memory), so that a load that fails or runs out of memory ends this process:
PID 1 sees the exit (137 when the OOM killer struck) and reads the reason from
load-failure.json. Once the workers are up they mark the model ready in its
runtime directory (readiness.py), which PID 1 waits for before answering 200.

Stopping drains, both ways it happens:
- the job stops (nginx got SIGQUIT): as in single-model serving, the master
  keeps serving until nginx has exited (gunicorn_app.DrainingArbiter);
- DELETE /models/NAME: PID 1 first removes the model's `serving` marker, so
  nginx sends it nothing new, then SIGTERM. The master keeps its workers
  serving until no connection has waited in its socket's backlog for a moment
  (the requests nginx had already passed on), then stops them gracefully: each
  finishes the request it holds.
"""

from __future__ import annotations

import argparse
import os
import select
import time
from typing import Any, List

from .... import log
from ...config import ServeConfig, received
from ...master import gunicorn_app
from ...runtime import RuntimeDir
from .. import layout
from ..worker.model_service import MultiModelService

LOAD_FAILED = 3
# The backlog must have been empty this long before the workers stop: nginx connects right
# after its routing check, so a request routed just before the marker went is in by then.
QUIET = 0.2


class ModelArbiter(gunicorn_app.DrainingArbiter):
    def handle_term(self) -> None:
        application: "ModelApplication" = self.app
        if os.path.exists(application.serving_marker):
            super().handle_term()  # the job stops: drain until nginx is gone
            return
        config = application.config
        log.info(f"model {application.name}: unloading once the requests already routed to it are answered")
        deadline = time.monotonic() + config.worker_timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._backlog():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET:
                break
            self.reap_workers()
            self.murder_workers()
            self.manage_workers()
            time.sleep(0.02)
        # A request a worker holds may take the whole request timeout.
        self.cfg.set("graceful_timeout", config.worker_timeout)
        raise StopIteration

    def _backlog(self) -> bool:
        """Whether a connection waits to be accepted (the listening socket is readable)."""
        fds = [listener.fileno() for listener in self.LISTENERS]
        try:
            return bool(fds) and bool(select.select(fds, [], [], 0)[0])
        except (OSError, ValueError):
            return False


class ModelApplication(gunicorn_app.ServeApplication):
    def __init__(self, service: MultiModelService, app: Any, bind: str, nginx_pidfile: str):
        self.service = service
        self.app_object = app
        self.name = service.name
        self.serving_marker = layout.serving_marker(service.runtime)
        super().__init__(service.config, service.runtime, bind, nginx_pidfile or None)

    def options(self):
        options = super().options()
        options["proc_name"] = f"smsuper model {self.name}"
        options["preload_app"] = True
        return options

    def worker_class(self) -> str:
        # nginx closes every connection to a model (its per-model socket is named by a variable,
        # and nginx pools connections only to an upstream block): there is nothing to keep, so
        # gunicorn's own sync worker, without the keep-alive worker's guard process, hand-over
        # and locks, which cost a model CPU per request and a process per worker for nothing.
        chosen = super().worker_class()
        return "sync" if chosen == gunicorn_app.KEEPALIVE_WORKER else chosen

    def load(self) -> Any:
        return self.app_object  # loaded before gunicorn started (main)

    def run(self) -> None:
        ModelArbiter(self).run()


def main(args: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="smsuper _model")
    parser.add_argument("--runtime-dir", required=True, help="the model's own runtime directory")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--nginx-pidfile", default="")
    options = parser.parse_args(args)
    handed = received(os.environ)
    log.configure(handed.log_level, handed.log_format)
    config = ServeConfig(**dict(handed.as_dict(), preload=True))  # the model once, shared by its workers
    service = MultiModelService(config, RuntimeDir(options.runtime_dir), options.name, options.url)
    service.load()
    if not service.ready:
        return LOAD_FAILED
    from ...worker.app import create_app

    gunicorn_app._service = service  # post_worker_init marks a worker ready when this model is
    ModelApplication(service, create_app(service), options.bind, options.nginx_pidfile).run()
    return 0
