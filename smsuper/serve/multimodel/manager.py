"""The model table of a multi-model endpoint, kept by PID 1: load, unload, exits, metrics.

Every model is one supervised child, its gunicorn master (model_server.py),
in its own process group with its own workers. Nothing here blocks PID 1's
loop: a load is a spawn and a wait for the model's readiness flag (polled
while some load is pending), an unload a signal and a wait for the exits, so
/ping, the other models' invocations and further loads go on meanwhile.

States: loading -> ready -> unloading -> (gone). POST /models of a name that is
in the table, whatever its state, is 409; DELETE of a loading model cancels the
load (its processes are killed, its POST is a 500 saying so, the DELETE a 200
once they are gone); GET /models lists the ready models only.

Memory (memory.py): a load is refused with 507 before anything starts when
what is left of the limit, less what the loads in progress are expected to
take, is below SMSUPER_MODEL_MEMORY_MARGIN_MB plus the mean memory a loaded
model takes here (the models of one endpoint are usually alike), measured at
its load and again when a load is judged or the metrics are scraped, at most
every MEMORY_REFRESH seconds (a model grows after its load). A load that
raises MemoryError, or whose master is killed with SIGKILL (the OOM killer's
signal) is 507 too; the model is not registered, and its processes are gone.

A ready model whose master dies (killed, crashed) is unregistered and its
files removed; its invocations are 404 from then on, so the platform loads
it again. No other model notices.
"""

from __future__ import annotations

import json
import os
import signal
import time

from ... import log
from ...init import procfs, untrusted
from ...init.spawn import ChildSpec, SpawnError
from ...metrics.exposition import counter, gauge
from .. import runtime as runtime_dir
from . import layout, memory, names

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Tuple

    Respond = Callable[[int, dict], None]

LOADING, READY, UNLOADING = "loading", "ready", "unloading"
POLL = 0.01  # seconds between looks at the readiness flags of loading models (a load takes ~50 ms)
GONE_POLL = 0.02
MAX_PAGE = 100
# The loaded models' memory is measured again at most this often (when a load is judged, when
# the metrics are scraped): a model grows after its load (caches, what its requests keep).
MEMORY_REFRESH = 2.0


def _start_time(pid: int) -> Optional[str]:
    """Field 22 of /proc/PID/stat: tells a process from a later one with the same pid."""
    fields = procfs.stat_fields(pid)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


class Model:
    def __init__(self, name: str, url: str, runtime):
        self.name = name
        self.url = url
        self.runtime = runtime
        self.state = LOADING
        self.child = None
        self.began = time.monotonic()
        self.waiters: List[Respond] = []
        self.memory = 0
        self.processes: List[Tuple[int, str]] = []  # (pid, start time) when the unload began
        self.kill_timer = None
        self.requests: Dict[str, int] = {}  # status code -> count, while loaded
        self.request_seconds = 0.0

    def describe(self) -> dict:
        return {"modelName": self.name, "modelUrl": self.url}


class Manager:
    def __init__(self, supervisor, runtime, spec: Callable[[str, str, object], ChildSpec], owner,
                 workers: int, margin: int, unload_timeout: float):
        self.supervisor = supervisor
        self.runtime = runtime
        self.spec = spec  # (name, url, the model's RuntimeDir) -> the ChildSpec of its master
        self.owner = owner
        self.workers = workers
        self.margin = margin
        self.unload_timeout = unload_timeout
        self.budget = memory.Budget()
        self.models: Dict[str, Model] = {}
        self._poll_timer = None
        self.loads: Dict[str, int] = {}  # outcome -> count
        self.load_seconds = 0.0
        self.unloads: Dict[str, int] = {}
        self._measured_at = 0.0

    def prepare(self) -> None:
        """ROOT/models: PID 1's, so nothing in it but what PID 1 made can be routed to."""
        path = layout.models_dir(self.runtime)
        untrusted.remove_tree(path)  # a reused SMSUPER_RUNTIME_DIR: an earlier run's models are not ours
        os.mkdir(path, 0o700)
        if self.owner is not None:
            os.chmod(path, 0o711)
        # The models' sockets, the workload's: made before any of its processes runs (as runtime.create does).
        sockets = layout.sockets_dir(self.runtime)
        untrusted.remove_tree(sockets)
        os.mkdir(sockets, 0o700)
        if self.owner is not None:
            os.chown(sockets, *self.owner, follow_symlinks=False)

    # ---- requests ---------------------------------------------------------------
    def load(self, name: object, url: object, target: str, respond: Respond) -> None:
        if not names.valid(name):
            respond(400, {"error": f"model_name must be {names.RULE}"})
            return
        if not isinstance(url, str) or not url.startswith("/") or "\0" in url or len(url) > 4096:
            respond(400, {"error": "url must be the absolute path of the model's directory"})
            return
        assert isinstance(name, str)
        if len(name) > layout.longest_name(self.runtime):
            respond(400, {"error": f"model_name {name[:20]}... is longer than the {layout.longest_name(self.runtime)} "
                                   f"characters a unix socket path under {self.runtime.root} leaves: set "
                                   f"SMSUPER_RUNTIME_DIR to a shorter path"})
            return
        if self.supervisor.stopping:
            respond(503, {"error": "the server is stopping"})
            return
        if name in self.models:
            state = self.models[name].state
            self._count_load("conflict")
            respond(409, {"error": f"model {name} is already {'loaded' if state == READY else state}"})
            return
        refusal = self._no_room(name)
        if refusal:
            self._count_load("no_memory")
            log.warning(refusal)
            respond(507, {"error": refusal})
            return
        model = Model(name, url, layout.model_runtime(self.runtime, name))
        try:
            runtime_dir.create(model.runtime.root, self.owner)
            model.child = self.supervisor.start(self.spec(name, url, model.runtime))
        except (OSError, SpawnError) as error:
            self._remove_files(model)
            self._count_load("failed")
            reason = getattr(error, "message", None) or getattr(error, "strerror", None) or str(error)
            log.error(f"cannot start model {name}: {reason}")
            respond(500, {"error": f"cannot start model {name}: {reason}"})
            return
        model.waiters.append(respond)
        self.models[name] = model
        log.info(f"loading model {name} from {url}" + (f" (target model {target})" if target else ""))
        self._schedule_poll()

    def unload(self, name: str, respond: Respond) -> None:
        model = self.models.get(name)
        if model is None:
            respond(404, {"error": f"model {name} is not loaded"})
            return
        if model.state == LOADING:
            self._cancel_load(model, respond)
            return
        model.waiters.append(respond)
        if model.state == UNLOADING:
            return  # answered with the first DELETE
        log.info(f"unloading model {name}")
        model.state = UNLOADING
        self._stop_routing(model)
        pid = self._note_processes(model)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        model.kill_timer = self.supervisor.call_later(self.unload_timeout, lambda: self._kill(model))

    def _note_processes(self, model: Model) -> Optional[int]:
        """The master's pid of a model being unloaded, its processes noted with their start times
        (so that a pid the kernel gave to someone else is never signalled); None, the unload
        finished, when it has no master."""
        pid = model.child.pid if model.child is not None else None
        if pid is None:
            self._finish_unload(model)
            return None
        model.processes = [(p, s) for p in [pid, *procfs.descendants(pid, include_zombies=False)]
                           for s in [_start_time(p)] if s is not None]
        return pid

    def _cancel_load(self, model: Model, respond: Respond) -> None:
        """DELETE of a loading model: nothing was routed to it, so nothing drains; its processes
        are killed, its POST answered with why, and the DELETE once they are gone."""
        log.info(f"unloading model {model.name} while it loads: the load is cancelled")
        self._count_load("failed")
        self._answer(model, 500, {"error": f"model {model.name} was unloaded (DELETE) before its load finished"})
        model.waiters.append(respond)
        model.state = UNLOADING
        pid = self._note_processes(model)
        if pid is None:
            return
        for victim, _ in model.processes:
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def describe(self, name: str) -> Tuple[int, dict]:
        model = self.models.get(name)
        if model is None or model.state != READY:
            why = "is not loaded" if model is None else f"is {model.state}"
            return 404, {"error": f"model {name} {why}"}
        return 200, model.describe()

    def listing(self, limit: int, token: str) -> Tuple[int, dict]:
        """Sorted by name; the token is the last name of the previous page, so loads and
        unloads between two pages neither repeat nor skip the models that stay."""
        ready = sorted(name for name, model in self.models.items() if model.state == READY)
        if token:
            ready = [name for name in ready if name > token]
        page = ready[:limit]
        body: dict = {"models": [self.models[name].describe() for name in page]}
        if len(ready) > limit:
            body["nextPageToken"] = page[-1]
        return 200, body

    # ---- the loop's events ------------------------------------------------------
    def child_exited(self, child, status) -> None:
        model = next((m for m in self.models.values() if m.child is child), None)
        self.supervisor.forget(child)
        if model is None:
            return
        if model.state == LOADING:
            code, reason = self._load_failure(model, status)
            log.error(f"model {model.name} did not load: {reason}")
            self._count_load("no_memory" if code == 507 else "failed")
            self._unregister(model)
            self._answer(model, code, {"error": reason})
        elif model.state == READY:
            log.error(f"model {model.name} stopped ({status.describe()}): it is unloaded, and loads again "
                      f"on the next POST /models")
            self.unloads["crashed"] = self.unloads.get("crashed", 0) + 1
            self._stop_routing(model)
            self._unregister(model)
        else:
            self._await_gone(model)

    def stopping(self) -> None:
        """The job stops: a pending load will not finish."""
        for model in list(self.models.values()):
            if model.state == LOADING:
                self._answer(model, 503, {"error": f"the server is stopping: model {model.name} was not loaded"})

    def request_done(self, model_name: bytes, code: bytes, seconds: bytes) -> None:
        """One invocation nginx answered (access_log.py): counted while the model is loaded."""
        model = self.models.get(model_name.decode("ascii", "replace"))
        if model is None or len(code) != 3 or not code.isdigit():
            return
        key = code.decode("ascii")
        model.requests[key] = model.requests.get(key, 0) + 1
        try:
            model.request_seconds += float(seconds)
        except ValueError:
            pass

    # ---- loading ----------------------------------------------------------------
    def _no_room(self, name: str) -> str:
        self._measure_again()
        limit, available = self.budget.limit_and_available()
        measured = [m.memory for m in self.models.values() if m.state == READY and m.memory]
        expected = sum(measured) // len(measured) if measured else 0
        loading = sum(1 for m in self.models.values() if m.state == LOADING)
        left = available - loading * expected
        if left >= expected + self.margin:
            return ""
        mib = 1024 * 1024
        return (f"not enough memory to load model {name}: {left // mib} MiB free of {limit // mib} MiB, and a "
                f"model here takes about {expected // mib} MiB with {self.margin // mib} MiB kept free "
                f"(SMSUPER_MODEL_MEMORY_MARGIN_MB); unload a model first")

    def _schedule_poll(self) -> None:
        if self._poll_timer is None:
            self._poll_timer = self.supervisor.call_later(POLL, self._poll)

    def _poll(self) -> None:
        self._poll_timer = None
        loading = [m for m in self.models.values() if m.state == LOADING]
        for model in loading:
            if model.child is not None and model.child.alive and self._workers_ready(model) >= self.workers:
                self._loaded(model)
        if any(m.state == LOADING for m in self.models.values()):
            self._schedule_poll()

    @staticmethod
    def _workers_ready(model: Model) -> int:
        """How many of the model's workers have marked themselves ready (readiness.py): a load
        answers once all of them have, so its memory is measured with every worker in it."""
        try:
            fd = untrusted.open_directory(model.runtime.ready_dir)  # never a link the workload put there
        except OSError:
            return 0
        try:
            return len(os.listdir(fd))
        finally:
            os.close(fd)

    def _loaded(self, model: Model) -> None:
        marker = layout.serving_marker(model.runtime)
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        except OSError as error:
            log.error(f"model {model.name}: cannot create {marker}: {error.strerror or error}")
            self._count_load("failed")
            self._answer(model, 500, {"error": f"model {model.name} loaded but cannot be routed to: {error}"})
            model.state = READY  # so that the unload below stops its processes
            self.unload(model.name, lambda status, body: None)
            return
        model.state = READY
        seconds = time.monotonic() - model.began
        model.memory = self._measure(model)
        self._count_load("ok")
        self.load_seconds += seconds
        log.info(f"model {model.name} loaded in {seconds:.2f} s ({model.memory // (1024 * 1024)} MiB)")
        self._answer(model, 200, {"status": f"model {model.name} loaded", "modelName": model.name})

    def _measure(self, model: Model) -> int:
        pid = model.child.pid if model.child is not None else None
        if pid is None:
            return 0
        return memory.processes_memory([pid, *procfs.descendants(pid, include_zombies=False)])

    def _measure_again(self) -> None:
        """Every loaded model's memory now (one look at the process table for all of them)."""
        now = time.monotonic()
        if now - self._measured_at < MEMORY_REFRESH:
            return
        self._measured_at = now
        ready = [m for m in self.models.values() if m.state == READY and m.child is not None and m.child.pid]
        if not ready:
            return
        children: Dict[int, List[int]] = {}
        for pid, (parent, state) in procfs.process_table().items():
            if state != "Z":
                children.setdefault(parent, []).append(pid)
        for model in ready:
            tree, stack = [model.child.pid], [model.child.pid]
            while stack:
                below = children.get(stack.pop(), [])
                tree += below
                stack += below
            model.memory = memory.processes_memory(tree) or model.memory

    def _load_failure(self, model: Model, status) -> Tuple[int, str]:
        try:
            report = json.loads(untrusted.read_regular(layout.failure_file(model.runtime), 8192))
            code, reason = int(report["status"]), str(report["reason"])[:2000]
            return (code if code in (400, 500, 507) else 500), reason
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if status.signal == signal.SIGKILL or status.code == 137:
            return 507, (f"model {model.name} was killed with SIGKILL while loading: out of memory (the kernel's "
                         f"OOM killer)")
        return 500, f"model {model.name}'s server exited while loading ({status.describe()}): its log says why"

    def _count_load(self, outcome: str) -> None:
        self.loads[outcome] = self.loads.get(outcome, 0) + 1

    # ---- unloading --------------------------------------------------------------
    def _stop_routing(self, model: Model) -> None:
        try:
            os.unlink(layout.serving_marker(model.runtime))  # PID 1's own directory
        except FileNotFoundError:
            pass

    def _alive(self, model: Model) -> List[int]:
        return [pid for pid, started in model.processes if _start_time(pid) == started]

    def _await_gone(self, model: Model) -> None:
        """The master is gone; its workers went before it. Anything else it left is killed."""
        left = self._alive(model)
        if not left:
            self._finish_unload(model)
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.supervisor.call_later(GONE_POLL, lambda: self._await_gone(model))

    def _kill(self, model: Model) -> None:
        if model.state != UNLOADING or model.name not in self.models:
            return
        log.warning(f"model {model.name} did not stop within {self.unload_timeout:g} s: SIGKILL")
        self.unloads["killed"] = self.unloads.get("killed", 0) + 1
        for pid in self._alive(model):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _finish_unload(self, model: Model) -> None:
        if model.kill_timer is not None:
            model.kill_timer.cancel()
        self.unloads["ok"] = self.unloads.get("ok", 0) + 1
        self._unregister(model)
        log.info(f"model {model.name} unloaded")
        self._answer(model, 200, {"status": f"model {model.name} unloaded"})

    def _unregister(self, model: Model) -> None:
        if self.models.get(model.name) is model:
            del self.models[model.name]
        self._remove_files(model)

    def _remove_files(self, model: Model) -> None:
        try:
            runtime_dir.remove(model.runtime)
        except OSError as error:
            log.warning(f"could not remove {model.runtime.root}: {error.strerror or error}")

    def _answer(self, model: Model, status: int, body: dict) -> None:
        waiters, model.waiters = model.waiters, []
        for respond in waiters:
            respond(status, body)

    # ---- metrics ----------------------------------------------------------------
    def collect(self) -> list:
        self._measure_again()
        loaded = gauge("models_loaded", "Models loaded and ready to be invoked (multi-model endpoint).")
        loaded.add(sum(1 for m in self.models.values() if m.state == READY))
        loads = counter("model_loads", "POST /models by outcome: ok, conflict (409), no_memory (507), failed.")
        for outcome, number in sorted(self.loads.items()):
            loads.add(number, outcome=outcome)
        load_time = counter("model_load_seconds", "Seconds the successful loads took, summed.")
        load_time.add(self.load_seconds)
        unloads = counter("model_unloads", "Models unloaded by outcome: ok, killed (did not stop in time), "
                                           "crashed (its processes died while loaded).")
        for outcome, number in sorted(self.unloads.items()):
            unloads.add(number, outcome=outcome)
        limit, available = self.budget.limit_and_available()
        limit_family = gauge("model_memory_limit_bytes", "The memory limit the loads are checked against.")
        limit_family.add(limit)
        used = gauge("model_memory_bytes", "Memory of each loaded model's processes (PSS), measured when it loaded "
                                           "and again at most every 2 s when a load is judged or metrics scraped.")
        requests = counter("model_requests", "Invocations of each loaded model by status code (the series goes "
                                             "when the model is unloaded).")
        seconds = counter("model_request_seconds", "Seconds nginx spent on each loaded model's invocations.")
        for name in sorted(self.models):
            model = self.models[name]
            if model.state != READY:
                continue
            used.add(model.memory, model=name)
            seconds.add(model.request_seconds, model=name)
            for code, number in sorted(model.requests.items()):
                requests.add(number, model=name, code=code)
        return [loaded, loads, load_time, unloads, limit_family, used, requests, seconds]
