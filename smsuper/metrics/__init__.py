"""Prometheus metrics, served by PID 1 in every job (train, serve, pass-through).

PID 1 serves them, not a gunicorn worker, so the endpoint answers while every
worker is busy or dead. Everything PID 1 runs here stays light: no thread,
no prometheus_client import (it would cost PID 1 ~10 MB of RSS), nothing
running between scrapes.

  exposition.py    the text format, written by hand
  server.py        the HTTP endpoint inside the supervisor's loop
  port.py          which port: SMSUPER_METRICS_PORT, SAGEMAKER_SAFE_PORT_RANGE, never the serving port
  processes.py     every job: the build, PID 1, each child role (up, restarts, exit code, memory, CPU)
  training.py      train: phase, duration, exit code, the user's metrics parsed from log lines
  multiproc.py     serve: what gunicorn's processes wrote (prometheus_client's multiprocess
                   files), merged at scrape time, dead workers' files compacted
  nginx_status.py  serve: nginx's stub_status figures
  responses.py     serve: the requests nginx answered, counted from its access log
  serving_state.py serve: the readiness files (ready flag, markers, ping-status.json)
  worker/          serve, in the gunicorn processes (never imported by PID 1): the
                   request metrics they record (serving.py), and room reserved for
                   their files on a full disk (roomy_mmap.py)

Names start with smsuper_, use base units (seconds, bytes) and counters end
in _total.
"""

from __future__ import annotations

import time

from .. import log
from . import exposition, port, processes

TYPE_CHECKING = False  # typing: 0.5 MB of PID 1's RSS unless another module loads it (tests/test_pid1_imports.py)
if TYPE_CHECKING:
    from typing import Callable, Iterable, List, Optional

    from .exposition import Family

    Collector = Callable[[], List[Family]]


class Exporter:
    """Renders one scrape from its collectors; a failing collector is skipped, not fatal."""

    def __init__(self, collectors: Iterable[Collector]):
        self.collectors = list(collectors)
        self._reported: set = set()
        self.server = None

    def render(self) -> bytes:
        started = time.perf_counter()
        families: List[Family] = []
        for collect in self.collectors:
            try:
                families.extend(collect())
            except Exception as error:
                name = getattr(collect, "__qualname__", repr(collect))
                if name not in self._reported:  # once: a scrape every few seconds must not flood the log
                    self._reported.add(name)
                    log.warning(f"metrics: collector {name} failed: {type(error).__name__}: {error}")
        took = exposition.gauge("scrape_collect_seconds", "Seconds PID 1 spent gathering the figures of this scrape.")
        took.add(time.perf_counter() - started)
        families.append(took)
        return exposition.render(families)


def start(supervisor, collectors: Iterable[Collector] = (), serving_port: Optional[int] = None,
          listen_port: Optional[int] = None) -> Optional[Exporter]:
    """Serve the metrics from `supervisor`'s loop; None when the endpoint is off or cannot listen.

    `listen_port` is a port already chosen with port.choose(); otherwise it is chosen here.
    """
    chosen = port.choose(serving_port) if listen_port is None else listen_port
    if chosen is None:
        return None
    exporter = Exporter([processes.build_info, processes.collector(supervisor), *collectors])
    from .server import MetricsServer

    try:
        exporter.server = MetricsServer(supervisor, chosen, exporter.render)
    except OSError as error:
        # Metrics are for operators: a taken port must not stop training or serving.
        log.warning(f"no metrics endpoint: cannot listen on port {chosen}: {error.strerror or error}")
        return None
    log.info(f"metrics at http://0.0.0.0:{exporter.server.port}/metrics")
    return exporter
