"""The serving stacks the benchmark starts, measures and stops.

  smsuper       `python smsuper.pyz serve`: nginx -> unix socket -> gunicorn sync workers
  bare          gunicorn + a minimal Flask app on TCP, nothing in front (same workers and class)
  seed          the seed-style stack: a launcher starting nginx (1 worker, 5m body limit)
                and gunicorn sync workers behind a unix socket, like the platform's example
  nginx-static  nginx alone answering a static 200
  toolkit       the official sagemaker-inference toolkit on multi-model-server (Java
                frontend, Python workers), its default handler service (apps/toolkit/)

gunicorn and Flask of the baselines come from smsuper.pyz's own extracted tree
(apps/gunicorn_from_tree.py), so every stack runs the same library versions.
The toolkit and the real model need packages smsuper does not (multi-model-server,
scikit-learn, pandas): those stacks run on the benchmark's own venv (ctx.bench_python,
made by scripts/install-bench-deps.sh from bench/requirements.txt).
A stack runs either as a plain child of the benchmark or, with namespace=True,
as PID 1 of a new PID namespace (`unshare --pid`), which is how a container
runs it: when PID 1 exits, the kernel kills everything left in it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import harness
from harness import BenchError

APPS = harness.HERE / "apps"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WORKERS = 2


class Context:
    """What every stack needs: where things live and which Python and pyz to use."""

    def __init__(self, workdir: Path, pyz: Path, python: str, cache_dir: Path, tree: Path,
                 workload_user: str = "nobody", bench_python: Optional[str] = None):
        self.workdir = workdir
        self.bench_python = bench_python
        self.workload_user = workload_user
        self.pyz = pyz
        self.python = python
        self.cache_dir = cache_dir
        self.tree = tree
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self._sequence = 0
        self.bases: Dict[str, Path] = {}

    def log_paths(self, name: str):
        self._sequence += 1
        stem = self.logs / f"{self._sequence:03d}-{name}"
        return stem.with_suffix(".out"), stem.with_suffix(".err")

    def needs_bench_python(self, what: str) -> str:
        if not self.bench_python:
            raise BenchError(f"{what} needs the benchmark's venv (bash scripts/install-bench-deps.sh); "
                             f"it could not be made: see the start of this run's output")
        return self.bench_python

    def smsuper_base(self, model: str, model_mib: Optional[int] = None) -> Path:
        """A SAGEMAKER_BASE_DIR whose model/code/inference.py is apps/model_<model>.py
        (with its MODEL_MIB set to model_mib when given). For the sklearn model, the model
        itself (model/model.joblib) and the request bodies (bodies/rows-N.csv) are made
        too, once: every stack of the figure reads this very base directory."""
        key = f"{model}-{model_mib}" if model_mib else model
        if key not in self.bases:
            base = self.workdir / f"ml-{key}"
            code = base / "model" / "code"
            code.mkdir(parents=True)
            source = (APPS / f"model_{model}.py").read_text()
            if model_mib:
                source, count = re.subn(r"^MODEL_MIB = \d+", f"MODEL_MIB = {int(model_mib)}", source, flags=re.M)
                if count != 1:
                    raise BenchError(f"apps/model_{model}.py has no MODEL_MIB line to set")
            (code / "inference.py").write_text(source)
            made = []
            if model == "sklearn":
                bodies = base / "bodies"
                bodies.mkdir()
                subprocess.run([self.needs_bench_python("the scikit-learn model"),
                                str(APPS / "make_sklearn_model.py"), str(base / "model"), str(bodies)],
                               check=True, stdout=subprocess.DEVNULL, timeout=300)
                made = [bodies, base / "model" / "model.joblib"] + sorted(bodies.iterdir())
            for path in [base, base / "model", code, code / "inference.py"] + made:
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
            self.bases[key] = base
        return self.bases[key]

    def gunicorn_command(self, python: Optional[str] = None) -> List[str]:
        return [python or self.python, str(self.workdir / "apps" / "gunicorn_from_tree.py"), str(self.tree)]

    def clean_env(self) -> Dict[str, str]:
        """This environment without anything that would steer smsuper or Python elsewhere."""
        return {k: v for k, v in os.environ.items()
                if not k.startswith(("SAGEMAKER_", "SMSUPER_", "SM_")) and k not in ("PYTHONPATH", "PYTHONHOME")}


class Stack:
    name = "stack"
    jvm = False  # a JIT-compiled server, measured only after a longer warm-up

    def __init__(self, ctx: Context, namespace: bool = False):
        self.ctx = ctx
        self.namespace = namespace
        self.port = harness.free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.started_at = 0.0  # monotonic time just before the process was created
        self.stdout_path: Optional[Path] = None
        self.stderr_path: Optional[Path] = None

    # ---- to be provided ------------------------------------------------------------
    def command(self) -> List[str]:
        raise NotImplementedError

    def env(self) -> Dict[str, str]:
        return self.ctx.clean_env()

    def cwd(self) -> Optional[str]:
        return None

    # ---- life --------------------------------------------------------------------------
    def start(self) -> "Stack":
        argv = self.command()
        if self.namespace:
            argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] + argv
        self.stdout_path, self.stderr_path = self.ctx.log_paths(self.name)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(argv, env=self.env(), cwd=self.cwd(), stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err)
        return self

    def root_pid(self) -> int:
        """The stack's top process: the Popen child, or PID 1 of its namespace."""
        assert self.proc is not None
        if not self.namespace:
            return self.proc.pid
        return harness.wait_until(lambda: (harness.children(self.proc.pid) or [None])[0], 10,
                                  "unshare to start its child")

    def processes(self) -> List[int]:
        root = self.root_pid()
        return [root] + harness.descendants(root)

    def stderr_tail(self, size: int = 1500) -> str:
        try:
            return self.stderr_path.read_bytes()[-size:].decode(errors="replace") if self.stderr_path else ""
        except OSError:
            return ""

    def wait_ready(self, limit: float = 60.0, path: str = "/ping") -> float:
        try:
            return harness.wait_http_200(self.port, limit, path, self.proc)
        except BenchError as error:
            raise BenchError(f"{self.name}: {error}\n{self.stderr_tail()}") from None

    def stop(self, grace: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.namespace:
            try:
                harness.kill_tree(self.root_pid(), None, grace)
            except BenchError:
                pass
            self.proc.kill()  # --kill-child takes the namespace down with it
            self.proc.wait(timeout=30)
        else:
            harness.kill_tree(self.proc.pid, self.proc, grace)

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Smsuper(Stack):
    name = "smsuper"

    def __init__(self, ctx: Context, model: str = "trivial", namespace: bool = False, metrics: bool = True,
                 cache_dir: Optional[Path] = None, model_mib: Optional[int] = None, python: Optional[str] = None,
                 **extra: str):
        super().__init__(ctx, namespace)
        self.python = python or ctx.python
        self.base = ctx.smsuper_base(model, model_mib)
        self.metrics_port = harness.free_port() if metrics else 0
        self.cache_dir = cache_dir or ctx.cache_dir
        self.extra = extra

    def command(self) -> List[str]:
        return [self.python, str(self.ctx.pyz), "serve"]

    def env(self) -> Dict[str, str]:
        env = self.ctx.clean_env()
        env.update({
            "SMSUPER_ALLOW_PRIVILEGED": "1",  # this machine looks like a privileged container
            "SMSUPER_CACHE_DIR": str(self.cache_dir),
            "SMSUPER_USER": self.ctx.workload_user,
            "SAGEMAKER_BASE_DIR": str(self.base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS),
            "SMSUPER_METRICS_PORT": str(self.metrics_port),
        })
        env.update(self.extra)
        return env

    def cwd(self) -> Optional[str]:
        return str(self.ctx.workdir)

    def roles(self) -> Dict[str, List[int]]:
        """init, gunicorn master, gunicorn workers, nginx master, nginx workers, other: pids by title."""
        root = self.root_pid()
        found: Dict[str, List[int]] = {"init": [root], "gunicorn_master": [], "gunicorn_workers": [],
                                       "nginx_master": [], "nginx_workers": [], "other": []}
        for pid in harness.descendants(root):
            text = harness.title(pid)
            if "gunicorn: worker" in text:
                found["gunicorn_workers"].append(pid)
            elif "gunicorn: master" in text or "_gunicorn" in text:
                found["gunicorn_master"].append(pid)
            elif "nginx: master" in text:
                found["nginx_master"].append(pid)
            elif "nginx: worker" in text:
                found["nginx_workers"].append(pid)
            else:
                found["other"].append(pid)
        return found

    def wait_workers(self, count: int = WORKERS, limit: float = 60.0) -> List[int]:
        """The gunicorn workers, once `count` of them exist."""
        def enough() -> Optional[List[int]]:
            workers = self.roles()["gunicorn_workers"]
            return workers if len(workers) >= count else None

        return harness.wait_until(enough, limit, f"{count} gunicorn workers")


class Bare(Stack):
    name = "bare-gunicorn"

    def command(self) -> List[str]:
        return self.ctx.gunicorn_command() + [
            "--workers", str(WORKERS), "--worker-class", "sync", "--bind", f"127.0.0.1:{self.port}",
            "--chdir", str(self.ctx.workdir / "apps"), "--log-level", "warning", "bare_app:app"]


class Seed(Stack):
    name = "seed-style"

    def __init__(self, ctx: Context, namespace: bool = False, model: str = "trivial", python: Optional[str] = None):
        """model "trivial": apps/seed/predictor.py (JSON in, the same JSON out); "sklearn":
        apps/seed/predictor_sklearn.py (CSV through pandas) on the sklearn base's model."""
        super().__init__(ctx, namespace)
        self.python = python or ctx.python
        self.base = ctx.smsuper_base(model) if model != "trivial" else None
        self.dir = ctx.workdir / f"seed-{self.port}"
        self.dir.mkdir()
        os.chmod(self.dir, 0o755)
        for name in ("wsgi.py", "serve.py"):
            shutil.copy(APPS / "seed" / name, self.dir / name)
        predictor = "predictor.py" if model == "trivial" else f"predictor_{model}.py"
        shutil.copy(APPS / "seed" / predictor, self.dir / "predictor.py")
        self.socket = self.dir / "gunicorn.sock"
        template = (APPS / "seed" / "nginx.conf").read_text()
        (self.dir / "nginx.conf").write_text(template.format(
            pid=self.dir / "nginx.pid", temp=self.dir, socket=self.socket, port=self.port))

    def command(self) -> List[str]:
        return [self.python, str(self.dir / "serve.py")]

    def env(self) -> Dict[str, str]:
        env = self.ctx.clean_env()
        env.update({"MODEL_SERVER_WORKERS": str(WORKERS), "MODEL_SERVER_TIMEOUT": "60", "SEED_NGINX": NGINX,
                    "SEED_NGINX_CONF": str(self.dir / "nginx.conf"), "SEED_SOCKET": str(self.socket),
                    "SEED_GUNICORN": json.dumps(self.ctx.gunicorn_command(self.python)), "PYTHONUNBUFFERED": "1"})
        if self.base is not None:
            env["SAGEMAKER_BASE_DIR"] = str(self.base)
        return env

    def cwd(self) -> Optional[str]:
        return str(self.dir)


class NginxStatic(Stack):
    name = "nginx-static"

    def __init__(self, ctx: Context, workers: int):
        super().__init__(ctx)
        self.dir = ctx.workdir / f"nginx-static-{self.port}"
        self.dir.mkdir()
        os.chmod(self.dir, 0o755)
        template = (APPS / "nginx_static.conf").read_text()
        (self.dir / "nginx.conf").write_text(template.format(
            workers=workers, pid=self.dir / "nginx.pid", temp=self.dir, port=self.port))

    def command(self) -> List[str]:
        return [NGINX, "-e", "stderr", "-c", str(self.dir / "nginx.conf")]

    def wait_ready(self, limit: float = 30.0, path: str = "/") -> float:
        return super().wait_ready(limit, path)


class Toolkit(Stack):
    """The official stack: apps/toolkit/serve.py calls sagemaker-inference's start_model_server(),
    which writes multi-model-server's properties and starts it; multi-model-server's Java
    frontend answers HTTP and hands each request to one of 2 Python workers running the
    toolkit's default handler service with the model's code/inference.py. Always PID 1 of its
    own PID namespace (see apps/toolkit/serve.py why)."""

    name = "official-toolkit"
    jvm = True

    def __init__(self, ctx: Context, model: str = "trivial"):
        super().__init__(ctx, namespace=True)
        self.port = harness.free_port_below(32767)  # its frontend refuses ports above a Java short
        self.python = ctx.needs_bench_python("the official toolkit's stack")
        self.base = ctx.smsuper_base(model)
        self.dir = ctx.workdir / f"toolkit-{self.port}"
        (self.dir / "tmp").mkdir(parents=True)
        shutil.copy(APPS / "toolkit" / "serve.py", self.dir / "serve.py")

    def command(self) -> List[str]:
        return [self.python, str(self.dir / "serve.py")]

    def env(self) -> Dict[str, str]:
        env = self.ctx.clean_env()
        env.update({
            # The toolkit starts `multi-model-server` by name, from the venv's bin.
            "PATH": str(Path(self.python).parent) + os.pathsep + env.get("PATH", "/usr/bin:/bin"),
            "SAGEMAKER_BASE_DIR": str(self.base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS),
            "TOOLKIT_MMS_CONFIG": str(self.dir / "mms.properties"),
            "TEMP": str(self.dir / "tmp"), "TMPDIR": str(self.dir / "tmp"),
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def cwd(self) -> Optional[str]:
        return str(self.dir)  # multi-model-server's logs/ (log4j2.xml's default LOG_LOCATION)


class SmsuperMultiModel(Smsuper):
    """`smsuper serve` with SAGEMAKER_MULTI_MODEL=true, as PID 1 of its own PID namespace (the
    figures read PID 1's memory and descriptors). No SAGEMAKER_MODEL_SERVER_WORKERS: each model
    gets smsuper's multi-model default, 1 worker, as the toolkit's does."""

    name = "smsuper-mme"

    def __init__(self, ctx: Context):
        super().__init__(ctx, namespace=True, SAGEMAKER_MULTI_MODEL="true")

    def env(self) -> Dict[str, str]:
        env = super().env()
        del env["SAGEMAKER_MODEL_SERVER_WORKERS"]
        return env


class ToolkitMultiModel(Toolkit):
    """The official stack in its multi-model mode, the way the platform runs it: the same
    apps/toolkit/serve.py with SAGEMAKER_MULTI_MODEL=true, so sagemaker-inference writes its
    multi-model properties (mme-mms.properties: model store "/", no model at start,
    default_workers_per_model=1, its default handler service) and starts multi-model-server
    without --models. Models come with POST /models {"model_name", "url"} (JSON: registered
    synchronously with the default workers) on the same port, and are invoked on
    /models/NAME/invoke, as the platform calls it; each model's worker is a Python process of
    its own that multi-model-server's frontend spawns with the model's directory on PYTHONPATH
    (where the toolkit's handler service imports `inference` from)."""

    name = "official-toolkit-mme"

    def env(self) -> Dict[str, str]:
        env = super().env()
        del env["SAGEMAKER_MODEL_SERVER_WORKERS"]  # the multi-model default: 1 per model
        env["SAGEMAKER_MULTI_MODEL"] = "true"
        return env


def stack_memory(pids: List[int]) -> Dict[str, float]:
    """Sum of RSS (double-counts shared pages), of PSS (shares split fairly) and of USS, in MiB."""
    rss = pss = uss = 0
    counted = 0
    for pid in pids:
        try:
            rollup = harness.smaps_rollup(pid)
        except OSError:
            continue
        rss += rollup.get("Rss", 0)
        pss += rollup.get("Pss", 0)
        uss += rollup["Uss"]
        counted += 1
    return {"processes": counted, "rss_mib": round(rss / 1024, 1), "pss_mib": round(pss / 1024, 1),
            "uss_mib": round(uss / 1024, 1)}


def python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], stdout=subprocess.PIPE,
                          check=True).stdout.decode().strip()

