#!/usr/bin/env python3
"""smsuper's benchmark: `python3 bench/run.py` (about 15 minutes), `--quick` for a smoke run.

Builds smsuper.pyz from this checkout into its own work directory (or takes
--pyz), then measures smsuper and its baselines in the same run on this
machine and prints a table of absolute figures, ratios and bars. A full run
writes bench/results/latest.json and latest.md (the committed record);
--quick or --only runs write partial.*. See bench/README.md for what each
figure means and how it is taken.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import figures  # noqa: E402
import harness  # noqa: E402
import multimodel  # noqa: E402
import report  # noqa: E402
import stacks  # noqa: E402
from harness import BenchError  # noqa: E402

PYENV = Path("/root/.pyenv/versions")
CPYTHONS = ("3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0")
FIGURE_NAMES = ("throughput", "ping_busy", "start_memory", "model_memory", "sigterm", "log_relay",
                "version_start", "metrics_scrape", "real_model", "multi_model")
# The figures with a stack on the benchmark's own venv (the official toolkit, the real model).
NEED_BENCH_VENV = {"throughput", "start_memory", "real_model", "multi_model"}


def say(message: str) -> None:
    print(message, flush=True)


# ---- setup -------------------------------------------------------------------------------

def build_into(pyz: Path) -> None:
    """A fresh build of this checkout, into the benchmark's own work directory: dist/smsuper.pyz
    is shared with whoever else runs the tests here and may be rebuilt under our feet."""
    say("building smsuper.pyz from this checkout ...")
    subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(pyz)], check=True,
                   stdout=subprocess.DEVNULL)


@contextmanager
def standalone_workdir(prefix: str) -> Iterator[Tuple[Path, Path]]:
    """(workdir, pyz) of a figure module of its own (streaming.py, batching.py...): a fresh
    directory with this checkout built into it and the stacks' apps beside it, every part
    readable by the workloads (they may run as nobody); removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(workdir, 0o755)
    try:
        pyz = workdir / "smsuper.pyz"
        build_into(pyz)
        os.chmod(pyz, 0o644)
        shutil.copytree(stacks.APPS, workdir / "apps")
        os.chmod(workdir / "apps", 0o755)
        yield workdir, pyz
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_id(pyz: Path) -> str:
    with zipfile.ZipFile(pyz) as archive:
        text = archive.read("smsuper/_build.py").decode()
    return re.search(r'BUILD_ID = "([^"]+)"', text).group(1)


def default_python() -> str:
    """Debian's own python3, as the README's image has it, else the interpreter running the benchmark."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


def others_can_run(program: str) -> bool:
    """True when a user other than root can execute program: every directory on the way is
    world-searchable and the file world-executable. smsuper runs its workloads as `nobody`,
    and a pyenv interpreter under /root (mode 0700) is out of nobody's reach."""
    path = Path(os.path.realpath(program))
    if not path.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


def unpacked_context(workdir: Path, pyz: Path, python: str) -> stacks.Context:
    """The stacks' context for a figure module of its own: `pyz` unpacked once into
    workdir/cache (its tree gives every stack the same gunicorn and Flask)."""
    cache = workdir / "cache"
    cache.mkdir(mode=0o755)
    harness.timed_run([python, str(pyz), "--version"], dict(os.environ, SMSUPER_CACHE_DIR=str(cache)))
    tree = next(cache.glob(f"{build_id(pyz)}-*"))
    return stacks.Context(workdir, pyz, python, cache, tree, "nobody" if others_can_run(python) else "root")


def bench_venv(base_python: str) -> Dict[str, object]:
    """The benchmark's own venv (bench/requirements.txt: the official toolkit, multi-model-server,
    scikit-learn, pandas), made or checked by scripts/install-bench-deps.sh from the same base
    interpreter as the other stacks. Returns {"python": path} or {"error": why}."""
    script = ROOT / "scripts" / "install-bench-deps.sh"
    say("checking the benchmark's venv (scripts/install-bench-deps.sh) ...")
    try:
        proc = subprocess.run(["bash", str(script)], env=dict(os.environ, PYTHON=os.path.realpath(base_python)),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=1800)
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": f"{script.name}: {error}"}
    lines = proc.stdout.decode(errors="replace").split()
    if proc.returncode != 0 or not lines:
        return {"error": f"{script.name} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-400:]}"}
    return {"python": lines[-1]}


def make_venv(base_python: str, where: Path) -> str:
    """A venv without the base's site-packages: Python as a clean image has it.

    This machine's base interpreters carry site-packages .pth start-up hooks
    (they import certifi, pathlib, re, ...) that cost every Python process tens
    of ms and several MB; a venv leaves them out, so the figures are smsuper's.
    """
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(where)], check=True)
    return str(where / "bin" / "python")


def command_output(argv: List[str]) -> str:
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        return proc.stdout.decode(errors="replace").strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable ({error})"


def git_state() -> Dict[str, object]:
    head = command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    try:  # not command_output: its strip() would eat the status column of the first line
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "smsuper", "build_zipapp.py",
                                "pyproject.toml"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               timeout=30).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return {"commit": head, "uncommitted_product_changes": [line[3:] for line in dirty.splitlines() if line[3:]]}


def host_python_overhead(host: str, clean: str) -> Dict[str, float]:
    """What this machine's site hooks cost one Python start (see make_venv)."""
    def measure(python: str):
        times = [harness.timed_run([python, "-c", "pass"]) for _ in range(3)]
        rss = command_output(["/usr/bin/time", "-f", "%M", python, "-c", "pass"]).splitlines()[-1]
        return sorted(times)[1], int(rss) / 1024 if rss.isdigit() else None

    (host_s, host_mib), (clean_s, clean_mib) = measure(host), measure(clean)
    return {"host_python_start_ms": round(host_s * 1000, 1), "clean_python_start_ms": round(clean_s * 1000, 1),
            "host_python_max_rss_mib": round(host_mib, 1) if host_mib else None,
            "clean_python_max_rss_mib": round(clean_mib, 1) if clean_mib else None}


# ---- the run ---------------------------------------------------------------------------------

def run_figure(key: str, title: str, results: Dict, function: Callable[[], Dict]) -> None:
    say(f"\n== {title}")
    began = time.monotonic()
    try:
        results[key] = function()
    except Exception as error:  # one broken figure must not lose the others
        say(f"  ERROR: {error}\n{traceback.format_exc()}")
        results[key] = {"error": f"{type(error).__name__}: {error}"}
    say(f"  ({time.monotonic() - began:.0f} s)")


def serving_figures(ctx: stacks.Context, profile: figures.Profile, results: Dict) -> None:
    """Figures 1 and 2 on long-lived stacks, all up at once and taking turns."""
    running: List[stacks.Stack] = []
    try:
        smsuper = stacks.Smsuper(ctx).start()
        running.append(smsuper)
        # A diagnostic beside it, not judged: the same smsuper with SMSUPER_METRICS_PORT=0
        # (no metrics recorded in the workers), to show what the metrics cost per request.
        quiet = stacks.Smsuper(ctx, metrics=False).start()
        quiet.name = "smsuper-no-metrics"
        running.append(quiet)
        bare = stacks.Bare(ctx).start()
        running.append(bare)
        seed = stacks.Seed(ctx).start()
        running.append(seed)
        toolkit = None
        if ctx.bench_python:
            toolkit = stacks.Toolkit(ctx).start()
            running.append(toolkit)
        else:
            results["throughput_toolkit"] = {"error": "the benchmark's venv is missing: no official toolkit in figure 1"}
        for stack in running:
            stack.wait_ready(120)
        nginx_workers = len(smsuper.roles()["nginx_workers"]) or 1
        static = stacks.NginxStatic(ctx, nginx_workers).start()
        running.append(static)
        static.wait_ready(30)
        named = {"smsuper": smsuper, "smsuper-no-metrics": quiet, "bare-gunicorn": bare, "seed-style": seed,
                 "nginx-static": static}
        if toolkit is not None:
            named["official-toolkit"] = toolkit
        results["nginx_static_workers"] = nginx_workers  # as many as smsuper's nginx has
        run_figure("throughput", "1. /invocations throughput (trivial model, 2 workers; the official toolkit after "
                   f"a JVM warm-up of at least {profile.jvm_warmup_seconds:g} s)", results,
                   lambda: figures.throughput(named, profile, say))
        try:
            init = smsuper.roles()["init"][0]
            results["pid1_after_load"] = {"pid1_rss_mib": round(harness.status_kb(init, "VmRSS") / 1024, 1)}
        except (OSError, BenchError) as error:
            results["pid1_after_load"] = {"error": str(error)}
        run_figure("ping_busy", "2. /ping while every worker is busy with 1 s predictions", results,
                   lambda: figures.ping_while_busy({"smsuper": smsuper, "seed-style": seed}, profile, say))
    finally:
        for stack in running:
            stack.stop()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short run of everything (a smoke test, ~1 min)")
    parser.add_argument("--pyz", type=Path, default=None,
                        help="measure this pyz as it is (default: build this checkout afresh for the run)")
    parser.add_argument("--python", default=default_python(),
                        help="base interpreter of the stacks (default: Debian's /usr/bin/python3 when present, as in "
                             "the README's image, else this one); a clean venv is made from it")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results",
                        help="where the results go (default: bench/results): latest.json and latest.md for a "
                             "full run of every figure, partial.json and partial.md otherwise")
    parser.add_argument("--only", default="", help="comma-separated figure names to run: " + ",".join(FIGURE_NAMES))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs of every process)")
    args = parser.parse_args(argv)
    profile = figures.QUICK if args.quick else figures.FULL
    only = set(filter(None, args.only.split(","))) or set(FIGURE_NAMES)
    unknown = only - set(FIGURE_NAMES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; choose from {', '.join(FIGURE_NAMES)}")
    for tool in (harness.WRK, stacks.NGINX):
        if not os.path.exists(tool):
            parser.error(f"{tool} is missing: apt-get install -y wrk nginx-light")

    began = time.monotonic()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = harness.machine_load()
    say(f"smsuper benchmark ({profile.name}) on {len(os.sched_getaffinity(0))} CPUs; load average "
        f"{load_start['loadavg']}, CPU busy {load_start['cpu_busy_fraction']:.0%} before starting")
    if load_start["high"]:
        say("WARNING: the machine is busy (other work is running): figures will be noisy and lower than usual")

    workdir = Path(tempfile.mkdtemp(prefix="smsuper-bench-"))
    os.chmod(workdir, 0o755)  # the workloads may run as nobody and must read their code
    results: Dict = {}
    meta: Dict = {"mode": profile.name, "started": started_at, "load_at_start": load_start}
    try:
        pyz = workdir / "smsuper.pyz"
        if args.pyz is None:
            build_into(pyz)
            build = "built from this checkout for the run"
        else:
            shutil.copy(args.pyz, pyz)  # a rebuild by someone else mid-run cannot change what is measured
            build = f"given: {args.pyz}"
        os.chmod(pyz, 0o644)
        shutil.copytree(stacks.APPS, workdir / "apps")
        os.chmod(workdir / "apps", 0o755)
        python = make_venv(args.python, workdir / "venv")
        cache = workdir / "cache"
        cache.mkdir(mode=0o755)
        env = dict(os.environ, SMSUPER_CACHE_DIR=str(cache))
        harness.timed_run([python, str(pyz), "--version"], env)  # the first start fills the cache
        identity = build_id(pyz)
        venv = bench_venv(args.python) if only & NEED_BENCH_VENV else {"error": "not needed by the figures run"}
        if "error" in venv:
            say(f"WARNING: no benchmark venv, so no official toolkit and no real model: {venv['error']}")
        tree = next(cache.glob(f"{identity}-*"))
        # smsuper's workloads run as nobody by default (SMSUPER_USER); when nobody cannot run
        # the interpreter, they run as root instead, and the table says so.
        workload_user = "nobody" if others_can_run(python) else "root"
        ctx = stacks.Context(workdir, pyz, python, cache, tree, workload_user, venv.get("python"))
        meta.update({
            "command": " ".join(["python3 bench/run.py", *argv]),
            "machine": {"cpus": len(os.sched_getaffinity(0)), "cpu_model": _cpu_model(),
                        "kernel": platform.release(), "memory_gib": round(os.sysconf("SC_PHYS_PAGES")
                                                                          * os.sysconf("SC_PAGE_SIZE") / 2 ** 30, 1)},
            "pyz": {"build": build, "build_id": identity, "bytes": pyz.stat().st_size},
            "git": git_state(),
            "python": stacks.python_version(python) + " (clean venv, no site-packages)",
            "nginx": command_output([stacks.NGINX, "-v"]).replace("nginx version: ", ""),
            "wrk": command_output([harness.WRK, "-v"]).splitlines()[0],
            "libraries": "gunicorn 23.0.0 and Flask 3.1.3 from smsuper.pyz's own extracted tree, for every stack",
            "workers": stacks.WORKERS,
            "workload_user": workload_user,
            "site_hook_cost": host_python_overhead(os.path.realpath(args.python), python),
            "bench_venv": venv.get("python") or venv["error"],
            "toolkit": _toolkit_versions(venv.get("python")),
        })
        say(f"pyz build {identity} ({build}), python {meta['python']}, {meta['nginx']}, {meta['wrk']}")

        if only & {"throughput", "ping_busy"}:
            serving_figures(ctx, profile, results)
        steps = [
            ("start_memory", "3. start to first /ping 200, and 4. memory at rest",
             lambda: figures.start_and_memory(ctx, profile, say)),
            ("model_memory", f"4. a {profile.model_mib} MiB model with and without preloading",
             lambda: figures.model_memory(ctx, profile, say)),
            ("sigterm", "5. SIGTERM with 4 slow requests in flight", lambda: figures.sigterm(ctx, profile, say)),
            ("log_relay", "6. training log relay against cat", lambda: figures.log_relay(ctx, profile, say)),
            ("version_start", "7. --version start per CPython, pyz size",
             lambda: figures.version_start(ctx, _pythons(workdir), profile, say)),
            ("metrics_scrape", f"8. metrics scrape after {profile.restarts} worker restarts",
             lambda: figures.metrics_scrape(ctx, profile, say)),
            ("real_model", "9. a real model: scikit-learn, default handlers, CSV of 1 and 100 rows",
             lambda: figures.real_model(ctx, profile, say)),
            ("multi_model", f"10. multi-model endpoints: load, invoke, memory, unload, cycles (official toolkit's "
                            f"multi-model stack beside it)", lambda: multimodel.multi_model(ctx, profile, say)),
        ]
        for key, title, function in steps:
            if key in only:
                run_figure(key, title, results, function)
    finally:
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    load_end = harness.machine_load(0.5)
    meta["load_at_end"] = load_end
    meta["seconds"] = round(time.monotonic() - began, 1)
    table = report.build(results)
    warnings = load_warnings(load_start, load_end)
    document = {"meta": meta, "warnings": warnings, "figures": results, "bars": table.bars}
    markdown = _markdown(meta, warnings, table)
    say("\n" + markdown)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    # latest.* is the record of the last full run (committed); a --quick or --only run is not
    # a record and goes to partial.* (git-ignored).
    stem = "latest" if profile is figures.FULL and only == set(FIGURE_NAMES) else "partial"
    (args.results_dir / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.results_dir / f"{stem}.md").write_text(markdown + "\n")
    say(f"\nwrote {args.results_dir / (stem + '.json')} and {args.results_dir / (stem + '.md')}")
    return 1 if any("error" in v for v in results.values() if isinstance(v, dict)) else 0


def load_warnings(load_start: Dict, load_end: Dict) -> List[str]:
    """Other work on the machine, before the run and right after it. The load average at the end
    counts the benchmark's own last minute, so only the CPU busy share is read there."""
    if load_start["high"] or load_end["cpu_busy_fraction"] > 0.25:
        return [f"the machine was busy (load average {load_start['loadavg']} and CPU "
                f"{load_start['cpu_busy_fraction']:.0%} busy before the run, CPU {load_end['cpu_busy_fraction']:.0%} "
                f"busy right after it, on {load_start['cpus']} CPUs): other work shared the CPUs, so absolute "
                f"figures are lower and noisier than on an idle machine"]
    return []


def _toolkit_versions(python) -> str:
    """The versions the toolkit and the real model ran with, as the venv has them."""
    if not python:
        return "n/a"
    names = ("sagemaker-inference", "multi-model-server", "scikit-learn", "pandas", "numpy")
    code = ("import importlib.metadata as m; print(', '.join(n + ' ' + m.version(n) for n in %r))" % (names,))
    java = command_output(["java", "-version"]).splitlines()
    return command_output([python, "-c", code]) + (f"; {java[0]}" if java else "")


def _pythons(workdir: Path) -> Dict[str, str]:
    """One clean venv per CPython 3.9-3.13 found on this machine."""
    found = {}
    for version in CPYTHONS:
        base = PYENV / version / "bin" / "python"
        if base.exists():
            found[version] = make_venv(str(base), workdir / f"venv-{version}")
    return found


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _markdown(meta: Dict, warnings: List[str], table: report.Table) -> str:
    load = meta["load_at_start"]
    hook = meta["site_hook_cost"]
    lines = [
        f"smsuper benchmark, {meta['mode']} run of {meta['started']} ({meta['seconds']:.0f} s): "
        f"`{meta['command']}`",
        "",
        f"- machine: {meta['machine']['cpus']} × {meta['machine']['cpu_model']}, {meta['machine']['memory_gib']} GiB, "
        f"Linux {meta['machine']['kernel']}; load average at start {load['loadavg']} "
        f"(CPU {load['cpu_busy_fraction']:.0%} busy), at end {meta['load_at_end']['loadavg']} (the run's own last "
        f"minute included; CPU {meta['load_at_end']['cpu_busy_fraction']:.0%} busy right after it)",
        f"- smsuper.pyz build {meta['pyz']['build_id']} ({meta['pyz']['bytes']:,} bytes) from commit "
        f"{meta['git']['commit']}" + (f" plus uncommitted changes to {', '.join(meta['git']['uncommitted_product_changes'])}"
                                      if meta['git']['uncommitted_product_changes'] else ""),
        f"- Python {meta['python']}; {meta['nginx']}; {meta['wrk']}; {meta['libraries']}; "
        f"{meta['workers']} sync workers everywhere (smsuper's keep nginx's connections open); "
        f"smsuper's workloads run as {meta['workload_user']}",
        f"- the official toolkit and the real model: {meta.get('toolkit', 'n/a')} (the benchmark's venv "
        f"`{meta.get('bench_venv', 'n/a')}`, from bench/requirements.txt)",
        f"- this machine's base Python start-up hooks (not used here) cost {hook['host_python_start_ms']} ms and "
        f"{hook['host_python_max_rss_mib']} MiB per process vs {hook['clean_python_start_ms']} ms and "
        f"{hook['clean_python_max_rss_mib']} MiB clean",
        "- each figure: median of the runs (min–max in brackets)",
    ]
    lines += [f"- **WARNING**: {w}" for w in warnings]
    return "\n".join(lines) + "\n\n" + table.markdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
